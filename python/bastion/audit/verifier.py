"""Verifying a log directory: every record, link and checkpoint signature, and optionally the witness."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.audit import files
from bastion.native import audit_verify_dir


@dataclass(frozen=True)
class VerifyResult:
    """What the verifier found; ``problem`` is None when the log is intact (``{segment, line, seq, reason}``
    otherwise). ``unsigned_tail`` records after the last checkpoint are intact but not yet signed."""

    segments: list[str]
    records: int
    bytes: int
    log_id: str | None
    last_seq: int | None
    last_hash: str | None
    last_checkpoint: int | None
    unsigned_tail: int
    problem: dict[str, Any] | None
    witness: files.Witness | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def problem_line(self) -> str:
        """One line naming segment, line and seq; empty when intact."""
        p = self.problem
        if p is None:
            return ""
        return f"{p['segment']} line {p['line']} (seq {p['seq']}): {p['reason']}"


def verify(directory: Path, public_key_file: Path, witness_file: Path | None = None) -> VerifyResult:
    """Verify the log in ``directory``; with ``witness_file`` also require the witnessed checkpoint."""
    w = files.read_witness(witness_file) if witness_file is not None else None
    return verify_with(directory, public_key_file, w)


def verify_with(
    directory: Path, public_key_file: Path, w: files.Witness | None, *, from_witness: bool = False
) -> VerifyResult:
    """:func:`verify` with the witness already read; ``from_witness`` reads only from the segment holding
    the witnessed checkpoint to the end (the writer's check at start)."""
    d = audit_verify_dir(
        directory, public_key_file, w.seq if w else None, w.hash if w else None, from_witness=from_witness
    )
    earlier = d["problem"] is not None and "witness" not in d["problem"]["reason"]
    if w is not None and d["log_id"] is not None and w.log_id != d["log_id"] and not earlier:
        d["problem"] = {
            "segment": d["segments"][0] if d["segments"] else "",
            "line": 1,
            "seq": 0,
            "reason": f"the witness is of log {w.log_id}, this is log {d['log_id']} (log replaced?)",
        }
    return VerifyResult(witness=w, **d)
