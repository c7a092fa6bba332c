"""The audit-log writer: one writer thread, group commit, signed checkpoints, rotation, fail closed.

``await log.append(kind, fields)`` returns the record's seq only after its bytes are fsynced, so a server
that awaits it before sending the final response never answers a call whose record could be lost. Records
queued together are sealed (seq assigned) in queue order, written with one ``write`` and one ``fsync``, then
acknowledged; a batch waits at most ``commit_max_delay_ms`` for company. A failed write or fsync fails the
log for good: every pending and later ``append`` raises ``AuditUnavailable``, and ``on_failure`` is called
once (from the writer thread) before any of them fails. The format and chain are the Rust core's; see
docs/audit-log.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import bastion
from bastion.audit import files, resume
from bastion.audit.errors import AuditUnavailable
from bastion.audit.keys import AuditKeys, load_keys, private_dir
from bastion.audit.settings import AuditSettings
from bastion.errors import IntegrityError, InvalidArgument
from bastion.native import AuditChain, audit_segment_name

logger = logging.getLogger(__name__)

#: Most records sealed into one write.
MAX_BATCH = 4096


class RecordSink(Protocol):
    """Receives each record's line once it is durable (e.g. ``bastion.audit.export.OtelAuditExporter``)."""

    def emit(self, line: bytes) -> None: ...


@dataclass(slots=True)
class _Item:
    kind: str
    fields: bytes
    future: concurrent.futures.Future[int]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__} (errno {exc.errno})"
    return type(exc).__name__


class AuditLog:
    """An open audit log. Create it with :meth:`open`; call :meth:`close` (or :meth:`aclose`) on shutdown."""

    def __init__(
        self,
        *,
        directory: Path,
        settings: AuditSettings,
        keys: AuditKeys,
        chain: AuditChain,
        fd: int,
        segment: int,
        segment_len: int,
        witness_path: Path,
        witnessed: files.Witness | None,
        on_failure: Callable[[], None] | None,
        sink: RecordSink | None,
    ) -> None:
        self._dir = directory
        self._keys = keys
        self._chain = chain
        self._fd = fd
        self._segment = segment
        self._segment_len = segment_len
        self._witness_path = witness_path
        # The witness on disk (None: none yet) and the latest checkpoint not yet written to it.
        self._witnessed: files.Witness | None = witnessed
        self._witness: files.Witness | None = None
        self._unwitnessed_records = 0
        self._last_witness = time.monotonic()
        self._on_failure = on_failure
        self._sink = sink
        self._max_bytes = settings.segment_max_bytes
        self._every_records = settings.checkpoint_every_records
        self._every_s = settings.checkpoint_every_s
        self._delay_s = settings.commit_max_delay_ms / 1000.0
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._closing = False
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="bastion-audit-writer", daemon=True)

    @classmethod
    def open(
        cls,
        settings: AuditSettings,
        cache_dir: Path,
        *,
        on_failure: Callable[[], None] | None = None,
        sink: RecordSink | None = None,
        reset_reason: str | None = None,
    ) -> AuditLog:
        """Recover the log (cutting a torn final line), check that it extends its witness
        (``bastion.audit.resume``), write a ``start`` record and a checkpoint, durably, and start the writer.
        ``reset_reason``: the operator's audited override (``bastion audit resume``)."""
        directory = private_dir(settings.resolved_dir(cache_dir))
        keys = load_keys(settings, directory)
        witness_path = settings.resolved_witness(directory)
        _warn_if_inside(directory, settings.key_paths(directory)[0], witness_path)
        chain, info = AuditChain.recover(directory)
        if info["fresh"] and info["segment"] != 0:
            raise IntegrityError(f"audit directory {directory}: segment {info['segment']} without its predecessors")
        public_key = settings.key_paths(directory)[1]
        resumed = resume.check(directory, public_key, witness_path, chain, info["fresh"], reset_reason)
        if resumed.set_aside:
            chain, info = AuditChain.recover(directory)
        fd = files.open_segment(directory / audit_segment_name(info["segment"]), info["segment_len"])
        self = cls(
            directory=directory,
            settings=settings,
            keys=keys,
            chain=chain,
            fd=fd,
            segment=info["segment"],
            segment_len=info["segment_len"],
            witness_path=witness_path,
            witnessed=resumed.witness,
            on_failure=on_failure,
            sink=sink,
        )
        start: dict[str, Any] = {"version": bastion.__version__}
        if info["truncated"]:
            start["recovered_bytes"] = info["truncated"]
            logger.warning("audit log: cut a torn final line of %d bytes (an unacknowledged write)", info["truncated"])
        if resumed.reset:
            start.update(event="witness_reset", reason=str(reset_reason)[:1024], records=resumed.set_aside)
            logger.warning("audit log: operator reset of the witness, recorded in the start record")
        try:
            buf = bytearray()
            lines: list[bytes] = []
            self._seal_into(buf, lines, "start", _encode(start))
            self._checkpoint_into(buf, lines)
            files.write_all(fd, buf)
            self._segment_len += len(buf)
            self._publish(lines, witness_now=True)
        except BaseException:
            os.close(fd)
            raise
        self._thread.start()
        return self

    # The server's API.

    async def append(self, kind: str, fields: dict[str, Any]) -> int:
        """Append one record (``kind``: request, decision, start or stop) and return its seq once it is on
        disk. Raises ``InvalidArgument`` naming a bad field, ``AuditUnavailable`` when the log has failed or
        is closed. Cancelling the caller does not withdraw a queued record."""
        fut = asyncio.wrap_future(self._submit(kind, fields))
        return await asyncio.shield(fut)

    def append_sync(self, kind: str, fields: dict[str, Any]) -> int:
        """:meth:`append` for threads and offline tools (blocks until the record is durable)."""
        return self._submit(kind, fields).result()

    def content_hmac(self, tenant: str, text: str) -> str:
        """``hmac-sha256:<hex>`` of ``text`` under the content key derived for ``tenant``."""
        return self._keys.content.mac_for(tenant, text.encode("utf-8", "surrogatepass"))

    def close(self, timeout: float = 30.0) -> None:
        """Write ``stop`` and a final checkpoint (durably), then stop the writer. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AuditUnavailable(f"audit writer did not stop within {timeout} s")

    async def aclose(self, timeout: float = 30.0) -> None:
        await asyncio.to_thread(self.close, timeout)

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def log_id(self) -> str:
        return self._chain.log_id

    @property
    def key_id(self) -> str:
        return self._keys.key_id

    @property
    def witness_path(self) -> Path:
        return self._witness_path

    @property
    def failed(self) -> bool:
        return self._failed

    # The writer thread.

    def _submit(self, kind: str, fields: dict[str, Any]) -> concurrent.futures.Future[int]:
        data = _encode(fields)
        fut: concurrent.futures.Future[int] = concurrent.futures.Future()
        with self._cond:
            if self._failed:
                raise AuditUnavailable("audit log failed earlier; see the first error")
            if self._closing:
                raise AuditUnavailable("audit log closed")
            self._queue.append(_Item(kind, data, fut))
            self._cond.notify()
        return fut

    def _witness_due(self) -> bool:
        """A signed checkpoint is not yet in the witness, and the witness's pace says it is time."""
        return self._witness is not None and (
            self._unwitnessed_records >= self._every_records or time.monotonic() >= self._last_witness + self._every_s
        )

    def _wait_s(self) -> float | None:
        if self._witness is None:
            return None
        return max(0.0, self._last_witness + self._every_s - time.monotonic())

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing and not self._witness_due():
                    self._cond.wait(self._wait_s())
                if self._queue and self._delay_s > 0 and not self._closing:
                    deadline = time.monotonic() + self._delay_s
                    while len(self._queue) < MAX_BATCH and not self._closing:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                final = self._closing and not self._queue
            try:
                self._commit(batch, final)
            except BaseException as exc:  # noqa: BLE001 - any failure fails the log closed
                self._fail(exc, batch)
                return
            if final:
                return

    def _commit(self, batch: list[_Item], final: bool) -> None:
        buf = bytearray()
        lines: list[bytes] = []
        results: list[tuple[concurrent.futures.Future[int], int | BaseException]] = []
        for item in batch:
            if self._segment_len + len(buf) >= self._max_bytes:
                buf = self._rotate(buf, lines)
            try:
                seq = self._seal_into(buf, lines, item.kind, item.fields)
            except InvalidArgument as exc:  # this record is refused; the log goes on
                results.append((item.future, exc))
                continue
            results.append((item.future, seq))
        if final:
            self._seal_into(buf, lines, "stop", b"{}")
        if self._chain.since_checkpoint:
            # Every group commit ends signed: no acknowledged record ever sits in a forgeable tail.
            self._checkpoint_into(buf, lines)
        self._unwitnessed_records += len(batch)
        if buf:
            files.write_all(self._fd, buf)
            self._segment_len += len(buf)
        for fut, r in results:
            if isinstance(r, BaseException):
                fut.set_exception(r)
            else:
                fut.set_result(r)
        self._publish(lines, witness_now=final)
        if final:
            os.close(self._fd)
            self._fd = -1

    def _seal_into(self, buf: bytearray, lines: list[bytes], kind: str, fields: bytes) -> int:
        seq, line = self._chain.seal(kind, fields, _now_ms())
        buf += line
        lines.append(line)
        return seq

    def _checkpoint_into(self, buf: bytearray, lines: list[bytes]) -> None:
        seq, digest, line = self._chain.checkpoint(self._keys.signing, _now_ms())
        buf += line
        lines.append(line)
        self._witness = files.Witness(log_id=self._chain.log_id, seq=seq, hash=digest)

    def _rotate(self, buf: bytearray, lines: list[bytes]) -> bytearray:
        """Close the current segment with a checkpoint (durably) and continue in the next one."""
        if self._chain.since_checkpoint:
            self._checkpoint_into(buf, lines)
        files.write_all(self._fd, buf)
        os.close(self._fd)
        self._fd = -1
        self._segment += 1
        path = self._dir / audit_segment_name(self._segment)
        if path.exists() or path.is_symlink():
            raise IntegrityError(f"audit segment {path} exists already")
        self._fd = files.open_segment(path, 0)
        self._segment_len = 0
        return bytearray()

    def _publish(self, lines: list[bytes], *, witness_now: bool = False) -> None:
        """After the lines are durable: the witness (when its pace or ``witness_now`` says so), then the sink."""
        w = self._witness
        if w is not None and (witness_now or self._witness_due()):
            prev = self._witnessed
            if prev is not None and (w.log_id != prev.log_id or w.seq <= prev.seq):
                raise IntegrityError(
                    f"refusing to overwrite the audit witness (log {prev.log_id} seq {prev.seq}) with log {w.log_id} "
                    f"seq {w.seq}: it does not extend it"
                )
            files.write_witness(self._witness_path, w)
            self._witnessed, self._witness = w, None
            self._unwitnessed_records = 0
            self._last_witness = time.monotonic()
        if self._sink is not None:
            for line in lines:
                try:
                    self._sink.emit(line)
                except Exception as exc:  # noqa: BLE001 - exporting is best effort; the log is the record
                    logger.warning("audit export failed: %s", type(exc).__name__)

    def _fail(self, exc: BaseException, batch: list[_Item]) -> None:
        with self._cond:
            self._failed = True
            pending = batch + list(self._queue)
            self._queue.clear()
        logger.error("audit log failed, refusing all further records: %s", _describe(exc))
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        # The server hears of it (e.g. goes NOT_SERVING) before any caller sees the error.
        if self._on_failure is not None:
            try:
                self._on_failure()
            except Exception:
                logger.exception("audit on_failure callback raised")
        for item in pending:
            if not item.future.done():
                item.future.set_exception(AuditUnavailable(f"audit write failed: {_describe(exc)}"))


def _encode(fields: dict[str, Any]) -> bytes:
    if not isinstance(fields, dict):
        raise InvalidArgument("fields", "must be a dict of strings and non-negative integers")
    try:
        return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (TypeError, ValueError):
        raise InvalidArgument("fields", "must be a dict of strings and non-negative integers") from None


def _warn_if_inside(directory: Path, signing_key: Path, witness: Path) -> None:
    """Keys and witness next to the log work, but whoever can write the log can then re-sign it or roll the
    witness back with it: the log is no longer tamper-evident against them."""
    d = directory.resolve()
    if d in signing_key.resolve().parents:
        logger.warning(
            "the audit signing key %s is inside the audit directory: whoever can write the log can re-sign it; "
            "keep it on a secret mount (audit.signing_key_file)",
            signing_key,
        )
    if d in witness.resolve().parents:
        logger.warning(
            "the audit witness %s is inside the audit directory: it can be rolled back with the log; "
            "keep it on other storage (audit.witness_file)",
            witness,
        )
