"""What the writer checks before it continues a log after a restart (docs/audit-log.md, "Restarts").

Threat: someone who can write the log directory but holds neither the signing key nor the witness keeps a
prefix that ends in a signed checkpoint, appends records of their own (``AuditChain.recover`` + ``seal``
need no key) and waits for a restart. The writer must never sign over such records, nor move the witness
onto a log that does not extend it. So before the first new record:

- a log without its witness, a witness without its log, or a witness of another log refuses the start;
- from the segment holding the witnessed checkpoint to the end, every record, link and checkpoint
  signature verifies, and the record at the witness's seq is that checkpoint with that hash;
- no record follows the last signed checkpoint. The writer signs every group commit before it
  acknowledges it, so such records were never acknowledged: they were appended by someone without the key,
  or cut short by a crash mid-write. Either way nothing is signed over them.

Each refusal names the problem and the operator procedure: inspect with ``bastion audit verify``, then
``bastion audit resume --reason TEXT``, which verifies the whole log, sets unsigned records aside in a file
next to the log, and continues with a ``start`` record (``event=witness_reset``, the reason, the count set
aside) signed into the chain: the override is itself audited.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bastion.audit import files
from bastion.audit.verifier import VerifyResult, verify_with
from bastion.errors import IntegrityError
from bastion.files import atomic_write
from bastion.native import AuditChain

log = logging.getLogger(__name__)

PROCEDURE = "inspect with `bastion audit verify`; to continue (audited): `bastion audit resume --reason TEXT`"


@dataclass(frozen=True)
class Resumed:
    """The witness the writer continues from (None: none yet) and what a reset set aside."""

    witness: files.Witness | None
    reset: bool = False
    set_aside: int = 0


def check(
    directory: Path, public_key: Path, witness_path: Path, chain: AuditChain, fresh: bool, reset_reason: str | None
) -> Resumed:
    """Raises IntegrityError (naming the problem and the procedure) unless the log may be continued."""
    if reset_reason is not None:
        return _reset(directory, public_key, chain, fresh)
    has_witness = witness_path.exists() or witness_path.is_symlink()
    if fresh:
        if has_witness:
            w = files.read_witness(witness_path)
            raise IntegrityError(
                f"audit witness {witness_path} names log {w.log_id} (seq {w.seq}) but {directory} holds no log "
                f"(deleted?); {PROCEDURE}"
            )
        return Resumed(None)
    if not has_witness:
        raise IntegrityError(
            f"audit witness {witness_path} is missing but {directory} holds log {chain.log_id} "
            f"(deleted with the log truncated?); {PROCEDURE}"
        )
    w = files.read_witness(witness_path)
    if w.log_id != chain.log_id:
        raise IntegrityError(
            f"audit witness {witness_path} names log {w.log_id} but {directory} holds log {chain.log_id} "
            f"(log replaced?); {PROCEDURE}"
        )
    r = verify_with(directory, public_key, w, from_witness=True)
    if not r.ok:
        raise IntegrityError(f"audit log {directory} does not extend its witness: {r.problem_line()}; {PROCEDURE}")
    if r.unsigned_tail:
        raise IntegrityError(_unsigned(directory, r))
    return Resumed(w)


def _unsigned(directory: Path, r: VerifyResult) -> str:
    return (
        f"audit log {directory}: {r.unsigned_tail} unsigned records after the last checkpoint (seq "
        f"{r.last_checkpoint}), never acknowledged (forged, or a write cut short): not signed over; {PROCEDURE}"
    )


def _reset(directory: Path, public_key: Path, chain: AuditChain, fresh: bool) -> Resumed:
    """The operator's override: the whole log must verify; unsigned records are moved to a side file."""
    if fresh:
        return Resumed(None, reset=True)
    r = verify_with(directory, public_key, None)
    if not r.ok:
        raise IntegrityError(f"audit log {directory} does not verify: {r.problem_line()}; a reset cannot fix that")
    n = r.unsigned_tail
    if n:
        _set_aside(directory, n, chain.log_id)
    return Resumed(None, reset=True, set_aside=n)


def _set_aside(directory: Path, n: int, log_id: str) -> None:
    """Move the last ``n`` records of the last segment into ``unsigned-<log id>-<seq>.jsonl`` (0600)."""
    segments = sorted(directory.glob("audit-*.jsonl"))
    last = segments[-1]
    lines = last.read_bytes().splitlines(keepends=True)
    if n > len(lines):
        raise IntegrityError(f"audit log {directory}: the unsigned records span segments; set them aside by hand")
    tail = lines[-n:]
    first_seq = len(lines) - n
    side = directory / f"unsigned-{log_id}-{last.stem}-line{first_seq + 1}.jsonl"
    atomic_write(side, b"".join(tail), mode=0o600, overwrite=False)
    keep = sum(len(x) for x in lines[:-n])
    fd = os.open(last, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.ftruncate(fd, keep)
        os.fsync(fd)
    finally:
        os.close(fd)
    log.warning("audit log: %d unsigned records set aside in %s (operator reset)", n, side.name)
