"""bastion.audit.records.iter_records: the audit log's records read back in seq order (requirement 4 of issue
14: the server re-derives quarantines from them at start), tolerant of a torn final line, refusing anything
else that would hide a record."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from audit_util import records, segments, settings

from bastion.audit import AuditLog
from bastion.audit.records import iter_records
from bastion.errors import IntegrityError


def _log(tmp: Path, n: int, **kw: object) -> Path:
    log = AuditLog.open(settings(tmp, **kw), tmp)
    try:
        for i in range(n):
            log.append_sync("decision", {"decision": "quarantine" if i % 2 else "alert", "model": f"m{i}"})
    finally:
        log.close()
    return log.directory


def test_every_record_in_seq_order_and_the_kind_filter(tmp_path: Path) -> None:
    """Requirement 4: what the writer wrote, in order; ``kinds`` selects record kinds."""
    d = _log(tmp_path, 5)
    got = list(iter_records(d))
    assert got == records(d)
    assert [r["seq"] for r in got] == list(range(len(got)))
    decisions = list(iter_records(d, kinds={"decision"}))
    assert [r["model"] for r in decisions] == [f"m{i}" for i in range(5)]


def test_records_across_rotated_segments(tmp_path: Path) -> None:
    """Requirement 4: the scan follows the chain across segments."""
    d = _log(tmp_path, 400, segment_max_bytes=64 * 1024)
    assert len(segments(d)) > 1
    assert [r["model"] for r in iter_records(d, kinds={"decision"})] == [f"m{i}" for i in range(400)]


def test_a_torn_final_line_is_ignored(tmp_path: Path) -> None:
    """Requirement 4: bytes after the last newline of the last segment (a write in progress, or cut by a
    crash) were never acknowledged: skipped, not an error."""
    d = _log(tmp_path, 3)
    seg = segments(d)[-1]
    with open(seg, "ab") as f:
        f.write(b'{"kind":"decision","decision":"quarantine_lifted","mod')
    assert [r["model"] for r in iter_records(d, kinds={"decision"})] == ["m0", "m1", "m2"]


@pytest.mark.parametrize(
    "damage",
    ["cut-a-middle-record", "torn-line-inside", "not-json", "missing-middle-segment", "symlinked-segment", "fifo"],
)
def test_a_log_that_hides_records_is_refused(tmp_path: Path, damage: str) -> None:
    """Requirement 4 (fail closed): a missing record, a torn line that is not the last, a malformed line, a
    missing segment, a symlink or a FIFO where a segment should be: IntegrityError naming the segment."""
    d = _log(tmp_path, 400, segment_max_bytes=64 * 1024)
    segs = segments(d)
    first = segs[0]
    lines = first.read_bytes().splitlines(keepends=True)
    if damage == "cut-a-middle-record":
        first.write_bytes(b"".join(lines[:5] + lines[6:]))
    elif damage == "torn-line-inside":
        first.write_bytes(b"".join(lines[:-1]) + lines[-1][:-10])
    elif damage == "not-json":
        first.write_bytes(b"".join(lines[:5] + [b"{not json\n"] + lines[6:]))
    elif damage == "missing-middle-segment":
        assert len(segs) > 2
        segs[1].unlink()
    elif damage == "symlinked-segment":
        target = tmp_path / "elsewhere.jsonl"
        segs[1].rename(target)
        segs[1].symlink_to(target)
    else:
        segs[1].unlink()
        os.mkfifo(segs[1])
    with pytest.raises(IntegrityError, match="audit-0000000"):
        list(iter_records(d, kinds={"decision"}))


def test_no_directory_and_an_empty_directory(tmp_path: Path) -> None:
    """Requirement 4: an empty directory has no records; a missing one cannot be read (fail closed)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert list(iter_records(empty)) == []
    with pytest.raises(IntegrityError, match="cannot read"):
        list(iter_records(tmp_path / "absent"))
