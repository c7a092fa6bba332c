"""Opt-in content logging: a tenant whose policy sets ``content_logging.enabled`` gets its prompts and
completions kept, outside the audit chain, for ``retention_days``.

Layout: ``<audit dir>/content/<tenant>/<YYYY-MM-DD>.jsonl`` (directories 0700, files 0600), one JSON line
per request: ``{"request_id", "time", "prompt", "completion"}``. The audit record of the same request
carries ``retention`` ("<N>d") and its HMACs, so the two can be matched. Day files older than the
tenant's retention are deleted at start and then hourly. Nothing is written for tenants without the
opt-in.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)
_DAY = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")
PRUNE_EVERY_S = 3600.0


class ContentStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _tenant_dir(self, tenant: str) -> Path:
        d = self.dir / tenant
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        return d

    def write(self, tenant: str, request_id: str, prompt: str, completion: str, now: dt.datetime | None = None) -> None:
        """Appends and fsyncs one request's content (called from a worker thread)."""
        now = now or dt.datetime.now(dt.UTC)
        path = self._tenant_dir(tenant) / f"{now:%Y-%m-%d}.jsonl"
        line = (
            json.dumps(
                {
                    "request_id": request_id,
                    "time": now.isoformat(timespec="milliseconds"),
                    "prompt": prompt,
                    "completion": completion,
                },
                ensure_ascii=False,
            ).encode("utf-8", "surrogatepass")
            + b"\n"
        )
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def prune(self, retention_days: dict[str, int], today: dt.date | None = None) -> int:
        """Deletes day files older than each tenant's retention (all of a tenant's files once it has no
        opt-in any more). Returns how many files were deleted."""
        today = today or dt.datetime.now(dt.UTC).date()
        removed = 0
        if not self.dir.is_dir():
            return 0
        for tdir in self.dir.iterdir():
            if not tdir.is_dir():
                continue
            keep_days = retention_days.get(tdir.name, 0)
            for f in tdir.iterdir():
                m = _DAY.match(f.name)
                if m is None:
                    continue
                age = (today - dt.date.fromisoformat(m.group(1))).days
                if age >= keep_days:
                    f.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("content logging: deleted %d day files past their retention", removed)
        return removed
