"""The audit-log writer: one writer thread, group commit, signed checkpoints, rotation, fail closed.

``await log.append(kind, fields)`` returns the record's seq only after its bytes are fsynced, so a server
that awaits it before sending the final response never answers a call whose record could be lost. Records
queued together are sealed (seq assigned) in queue order, written with one ``write`` and one ``fsync``, then
acknowledged. The batch is whatever queued while the previous one was written and fsynced; with
``commit_max_delay_ms`` > 0 it also waits that long for company (off by default: every Generate call awaits
two records, so the wait lands twice on each call's latency).

No space (ENOSPC, EDQUOT) suspends the log instead of failing it: the batch's records are refused
(``AuditUnavailable``; none was acknowledged), the segment is cut back to its last acknowledged byte and the
chain re-read from disk, and every later ``append`` is refused until the writer, polling free space,
durably writes an ``audit_resumed`` record; then the chain continues. :attr:`AuditLog.accepting` is False
meanwhile, and while free space is below the reserve (``bastion.audit.disk``), which the server turns into
health NOT_SERVING and refusals of new calls. Any other failed write or fsync fails the log for good: every
pending and later ``append`` raises ``AuditUnavailable``, and ``on_failure`` is called once (from the writer
thread) before any of them fails. The format and chain are the Rust core's; see docs/audit-log.md.
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
from bastion.audit import disk, files, resume
from bastion.audit.errors import AuditUnavailable
from bastion.audit.keys import AuditKeys, load_keys, private_dir
from bastion.audit.settings import AuditSettings
from bastion.errors import IntegrityError, InvalidArgument
from bastion.files import fsync_dir
from bastion.native import AuditChain, audit_segment_name

logger = logging.getLogger(__name__)

#: Most records sealed into one write.
MAX_BATCH = 4096
#: How often the writer looks at free space (and, suspended, whether it can resume).
SPACE_POLL_S = 0.5
#: Suspended, the writer tries to resume only once this much space is free.
RESUME_MIN_FREE = 64 * 1024
#: The principal of the records the log writes about itself.
AUDIT_PRINCIPAL = "bastion:audit"


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
        # The latest checkpoint known durable (read by other threads: one reference, replaced whole).
        self._durable: files.Witness | None = witnessed
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
        self._reserve = settings.min_free_bytes
        self._alarm = settings.alarm_free_bytes
        self._level = disk.Level.OK
        self._free = -1
        self._next_space_check = 0.0
        # Suspended for lack of space: the error, since when, and how many records were refused meanwhile.
        self._suspended: BaseException | None = None
        self._suspended_at = 0.0
        self._refused = 0
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
            self._check_space()
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
    def latest_checkpoint(self) -> files.Witness | None:
        """The latest checkpoint on disk (log id, seq, hash): every record acknowledged before this is read
        is covered by it (each group commit ends with a checkpoint)."""
        return self._durable

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def accepting(self) -> bool:
        """Whether the server should take new calls: the log works, is not suspended for lack of space, and
        free space is above the reserve (``audit.min_free_bytes``)."""
        return not (self._failed or self._closing) and self._suspended is None and self._level < disk.Level.LOW

    @property
    def disk_level(self) -> disk.Level:
        return self._level

    @property
    def disk_free_bytes(self) -> int:
        """Free bytes on the log's file system at the last look (every ``SPACE_POLL_S`` and after each commit)."""
        return self._free

    # The writer thread.

    def _submit(self, kind: str, fields: dict[str, Any]) -> concurrent.futures.Future[int]:
        data = _encode(fields)
        fut: concurrent.futures.Future[int] = concurrent.futures.Future()
        with self._cond:
            if self._failed:
                raise AuditUnavailable("audit log failed earlier; see the first error")
            if self._closing:
                raise AuditUnavailable("audit log closed")
            if self._suspended is not None:
                self._refused += 1
                raise AuditUnavailable("audit log suspended: no space on its disk")
            self._queue.append(_Item(kind, data, fut))
            self._cond.notify()
        return fut

    def _witness_due(self) -> bool:
        """A signed checkpoint is not yet in the witness, and the witness's pace says it is time."""
        return self._witness is not None and (
            self._unwitnessed_records >= self._every_records or time.monotonic() >= self._last_witness + self._every_s
        )

    def _wait_s(self) -> float:
        wake = self._next_space_check
        if self._witness is not None:
            wake = min(wake, self._last_witness + self._every_s)
        return max(0.0, wake - time.monotonic())

    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._queue
                    and not self._closing
                    and not self._witness_due()
                    and time.monotonic() < self._next_space_check
                ):
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
                if self._suspended is not None:
                    self._try_resume()
                if self._suspended is None:
                    self._commit(batch, final)
                if time.monotonic() >= self._next_space_check or batch:
                    self._check_space()
            except BaseException as exc:  # noqa: BLE001 - no space suspends; any other failure fails the log closed
                if disk.is_no_space(exc) and not final and self._suspend(exc, batch):
                    continue
                self._fail(exc, batch)
                return
            if final and self._suspended is not None:  # closing with no space for the stop record
                self._fail(self._suspended, batch)
                return
            if final:
                return

    def _commit(self, batch: list[_Item], final: bool) -> None:
        buf = bytearray()
        lines: list[bytes] = []
        results: list[tuple[concurrent.futures.Future[int], int | BaseException]] = []
        witness_before = self._witness
        try:
            if self._segment_len >= self._max_bytes:
                self._rotate()
            for item in batch:
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
            if buf:
                files.write_all(self._fd, buf)
        except BaseException:
            self._witness = witness_before  # that checkpoint never became durable
            raise
        self._segment_len += len(buf)
        self._unwitnessed_records += len(batch)
        if self._witness is not None:
            self._durable = self._witness  # before any caller hears its record is durable
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

    def _rotate(self) -> None:
        """Continue in the next segment (at a commit's start: the current one ends with a checkpoint, as every
        commit does, so a segment holds whole commits and may pass ``segment_max_bytes`` by one)."""
        os.close(self._fd)
        self._fd = -1
        self._segment += 1
        self._segment_len = 0
        path = self._dir / audit_segment_name(self._segment)
        if path.exists() or path.is_symlink():
            raise IntegrityError(f"audit segment {path} exists already")
        self._fd = files.open_segment(path, 0)

    # Disk space: the budget, suspension and recovery.

    def _check_space(self) -> None:
        """Look at free space; on a change of level, log it and record it (``audit_disk``)."""
        self._next_space_check = time.monotonic() + SPACE_POLL_S
        self._free = free = disk.free_bytes(self._dir)
        level = disk.level_for(free, self._level, reserve=self._reserve, alarm=self._alarm)
        if level == self._level:
            return
        self._level = level
        if level is disk.Level.LOW:
            logger.error(
                "audit disk: %d bytes free, below the reserve (audit.min_free_bytes = %d): new calls are refused "
                "and health is NOT_SERVING until space is freed",
                free,
                self._reserve,
            )
        elif level is disk.Level.ALARM:
            logger.warning(
                "audit disk alarm: %d bytes free, below audit.alarm_free_bytes = %d (the reserve is %d)",
                free,
                self._alarm,
                self._reserve,
            )
        else:
            logger.info("audit disk: %d bytes free, above the alarm level again", free)
        fields = {"level": level.name.lower(), "free_bytes": free}
        if self._suspended is not None:  # the resume record follows; free space is logged above
            return
        with contextlib.suppress(AuditUnavailable):  # closing: the stop record follows anyway
            self._submit("decision", {**self._own("audit_disk", "alert"), **fields})

    @staticmethod
    def _own(event: str, decision: str) -> dict[str, Any]:
        return {"principal": AUDIT_PRINCIPAL, "decision": decision, "event": event}

    def _suspend(self, exc: BaseException, batch: list[_Item]) -> bool:
        """No space: refuse the batch and the queue (none of it was acknowledged), cut the segment back to its
        last acknowledged byte and re-read the chain. False when that fails (the log then fails for good)."""
        with self._cond:
            first = self._suspended is None
            if first:
                self._suspended, self._suspended_at, self._refused = exc, time.monotonic(), 0
            pending = batch + list(self._queue)
            self._queue.clear()
        if first:
            logger.error("audit log: %s: suspended; calls are refused until space is freed", _describe(exc))
        refused = 0
        for item in pending:
            if not item.future.done():
                refused += 1
                item.future.set_exception(AuditUnavailable(f"audit write failed: {_describe(exc)}"))
        with self._cond:
            self._refused += refused
        try:
            self._cut_back()
        except BaseException as cut:  # noqa: BLE001 - cannot get back to a known state: fail closed
            logger.error("audit log: cannot cut back to the last acknowledged record: %s", _describe(cut))
            return False
        self._next_space_check = time.monotonic() + SPACE_POLL_S
        return True

    def _cut_back(self) -> None:
        """Truncate the current segment to its acknowledged length (removing a new, still empty one) and
        re-read the chain from disk, so the next record extends the last durable one."""
        path = self._dir / audit_segment_name(self._segment)
        if self._segment_len == 0 and self._segment > 0:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            path.unlink(missing_ok=True)
            fsync_dir(self._dir)
        else:
            if self._fd < 0:
                raise IntegrityError(f"audit segment {path} is not open")
            os.ftruncate(self._fd, self._segment_len)
            files.sync(self._fd)
            os.close(self._fd)
            self._fd = -1
        chain, info = AuditChain.recover(self._dir)
        if info["truncated"] or info["fresh"]:
            raise IntegrityError(f"audit directory {self._dir}: not as acknowledged after the cut")
        self._chain, self._segment, self._segment_len = chain, info["segment"], info["segment_len"]
        self._fd = files.open_segment(self._dir / audit_segment_name(self._segment), self._segment_len)

    def _try_resume(self) -> None:
        """Suspended: once space shows, write an ``audit_resumed`` record and a checkpoint; durable, the log
        takes records again. No space yet: raises (the caller cuts back and stays suspended)."""
        if disk.free_bytes(self._dir) < RESUME_MIN_FREE:
            self._next_space_check = time.monotonic() + SPACE_POLL_S
            return
        assert self._suspended is not None
        outage_ms = int((time.monotonic() - self._suspended_at) * 1000)
        with self._cond:
            refused = self._refused
        fields = {
            **self._own("audit_resumed", "resume"),
            "reason": f"no space: {_describe(self._suspended)}"[:512],
            "outage_ms": outage_ms,
            "count": refused,
        }
        buf = bytearray()
        lines: list[bytes] = []
        witness_before = self._witness
        try:
            self._seal_into(buf, lines, "decision", _encode(fields))
            self._checkpoint_into(buf, lines)
            files.write_all(self._fd, buf)
        except BaseException:
            self._witness = witness_before
            raise
        self._segment_len += len(buf)
        with self._cond:
            self._suspended = None
        logger.warning("audit log: space is back; resumed after %d ms (%d records refused)", outage_ms, refused)
        self._publish(lines, witness_now=True)

    def _publish(self, lines: list[bytes], *, witness_now: bool = False) -> None:
        """After the lines are durable: the witness (when its pace or ``witness_now`` says so), then the sink."""
        w = self._witness
        if w is not None:
            self._durable = w
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
