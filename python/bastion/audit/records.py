"""Reading the audit log's records back, in seq order: what the server re-derives at start (the quarantined
models, :meth:`bastion.assurance.release.ReleaseBook.restore_quarantines`).

``iter_records(directory, kinds=...)`` yields every record of the segments ``audit-NNNNNNNN.jsonl`` as a
dict (the fields of docs/audit-log.md), optionally only those of the given kinds. It checks what a reader
can check without keys, and fails closed (``IntegrityError`` naming the segment and line) on anything that
could hide a record: the segments must be numbered 0, 1, 2, ... without a gap; each is opened
``O_NOFOLLOW|O_NONBLOCK`` and must be a regular file (:func:`bastion.files.open_regular`: no symlink, FIFO or
device); every line is one JSON object of at most :data:`MAX_LINE` bytes with an integer ``seq`` and a
string ``kind``; seqs run 0, 1, 2, ... across the segments. Only bytes after the last newline of the last
segment are skipped: a write in progress, or one cut short by a crash, was never acknowledged.

Limits: it reads every byte of the log and JSON-decodes every line (about 9 µs per record, 70 MB/s, on
the 2-core CI machine: ~10 s per million records), and it does not check hashes or signatures: a log
rewritten and re-chained by someone holding the signing key reads as written. ``bastion audit verify``
checks those (and the writer, at start, from the witnessed segment on: :mod:`bastion.audit.resume`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from bastion.errors import IntegrityError
from bastion.files import open_regular

#: The longest record line (bytes, newline excluded): the Rust core's ``audit::limits::MAX_LINE``.
MAX_LINE = 64 << 10
_SEGMENT = re.compile(r"audit-([0-9]{8})\.jsonl")


def _segment_name(i: int) -> str:
    return f"audit-{i:08d}.jsonl"


def segment_paths(directory: Path) -> list[Path]:
    """The log's segment files in order; IntegrityError when the directory cannot be listed or one is missing."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise IntegrityError(f"audit log {directory}: cannot read the directory ({exc.strerror})") from None
    found = sorted(int(m.group(1)) for n in names if (m := _SEGMENT.fullmatch(n)))
    for expected, i in enumerate(found):
        if i != expected:
            raise IntegrityError(f"audit log {directory}: segment {_segment_name(expected)} is missing")
    return [directory / _segment_name(i) for i in found]


def _record(line: bytes, where: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        raise IntegrityError(f"audit log {where}: not a JSON record") from None
    if not isinstance(rec, dict) or type(rec.get("seq")) is not int or not isinstance(rec.get("kind"), str):
        raise IntegrityError(f"audit log {where}: not an audit record (seq, kind)")
    return rec


def iter_records(directory: Path, kinds: Collection[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every record of the log in ``directory`` in seq order (only ``kinds``, when given); see the module."""
    segments = segment_paths(directory)
    expected = 0
    for n, path in enumerate(segments):
        last = n == len(segments) - 1
        try:
            fd = open_regular(path)
        except OSError as exc:
            raise IntegrityError(f"audit log {path.name}: cannot read ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as f:
            lineno = 0
            while True:
                try:
                    line = f.readline(MAX_LINE + 2)
                except OSError as exc:
                    raise IntegrityError(f"audit log {path.name}: cannot read ({exc.strerror})") from None
                if not line:
                    break
                lineno += 1
                where = f"{path.name} line {lineno}"
                if len(line) > MAX_LINE + 1 or (len(line) == MAX_LINE + 1 and not line.endswith(b"\n")):
                    raise IntegrityError(f"audit log {where}: longer than {MAX_LINE} bytes")
                if not line.endswith(b"\n"):
                    if last:
                        break  # a torn final line: never acknowledged
                    raise IntegrityError(f"audit log {where}: a torn line inside the log")
                rec = _record(line, where)
                if rec["seq"] != expected:
                    raise IntegrityError(
                        f"audit log {where}: seq {rec['seq']} where {expected} was expected (records missing or "
                        "reordered; inspect with `bastion audit verify`)"
                    )
                expected += 1
                if kinds is None or rec["kind"] in kinds:
                    yield rec
