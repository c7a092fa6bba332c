"""Helpers for the audit-log tests: settings in a temporary directory, reading records back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bastion.audit import AuditSettings


def settings(tmp: Path, **kw: Any) -> AuditSettings:
    return AuditSettings(dir=tmp / "audit", **kw)


def segments(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("audit-*.jsonl"))


def records(log_dir: Path) -> list[dict[str, Any]]:
    """Every complete record of every segment, in file order."""
    out: list[dict[str, Any]] = []
    for seg in segments(log_dir):
        out += [json.loads(line) for line in seg.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]
    return out


def public_key(log_dir: Path) -> Path:
    return log_dir / "keys" / "signing.pub"
