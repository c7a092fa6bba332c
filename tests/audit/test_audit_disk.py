"""The audit log on a full disk (issue 15, item 4): suspended, not dead; a reserve and an alarm; recovery.

Each test mounts a small tmpfs for the log (tests/small_fs.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from audit_util import public_key, records, settings

from bastion.audit import AuditLog, AuditUnavailable, verify
from bastion.audit.disk import Level
from small_fs import fill, free, small_fs

MIB = 1 << 20


async def _until(cond: object, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def test_no_space_suspends_the_log_and_it_resumes_when_space_is_back(tmp_path: Path) -> None:
    """Before: ENOSPC failed the log for good (NOT_SERVING until a restart). Now the refused records were
    never acknowledged, the acknowledged ones are all there, and once space is back the chain continues."""
    failures: list[int] = []
    with small_fs(tmp_path / "fs", 2 * MIB) as fs:
        s = settings(fs, min_free_bytes=0, alarm_free_bytes=0)
        log = AuditLog.open(s, tmp_path, on_failure=lambda: failures.append(1))
        acked = [await log.append("request", {"request_id": "before"})]
        filler = fill(fs)
        refused = 0
        for i in range(200):
            try:
                acked.append(await log.append("request", {"request_id": f"r{i}", "reason": "x" * 400}))
            except AuditUnavailable:
                refused += 1
                break
        assert refused == 1, "the disk never filled"
        assert not log.accepting and not log.failed and failures == []
        with pytest.raises(AuditUnavailable, match="suspended"):
            await log.append("request", {"request_id": "while-full"})

        filler.unlink()
        await _until(lambda: log.accepting)
        after = await log.append("request", {"request_id": "after"})
        assert after > acked[-1]
        log.close()
        recs = records(log.directory)
        seqs = {r["seq"] for r in recs}
        assert set(acked) <= seqs, "an acknowledged record was lost"
        assert "while-full" not in {r.get("request_id") for r in recs}
        resumed = [r for r in recs if r.get("event") == "audit_resumed"]
        assert len(resumed) == 1 and resumed[0]["count"] >= 2
        r = verify(log.directory, public_key(log.directory), log.witness_path)
        assert r.ok, r.problem_line()
        # And a restart continues it.
        AuditLog.open(s, tmp_path).close()
        assert verify(log.directory, public_key(log.directory), log.witness_path).ok
        assert failures == []


async def test_below_the_reserve_the_log_stops_accepting_new_calls_and_raises_an_alarm(tmp_path: Path) -> None:
    """The disk budget: below alarm_free_bytes an alarm (recorded); below min_free_bytes the log tells the
    server to take no new calls, while records still go in (the reserve is theirs); freed, it accepts again."""
    with small_fs(tmp_path / "fs", 4 * MIB) as fs:
        s = settings(fs, min_free_bytes=1 * MIB, alarm_free_bytes=2 * MIB)
        log = AuditLog.open(s, tmp_path)
        assert log.accepting and log.disk_level is Level.OK
        filler = fill(fs, leave=int(1.5 * MIB))
        await _until(lambda: log.disk_level is Level.ALARM)
        assert log.accepting
        fill(fs, leave=MIB // 2, name="more")
        await _until(lambda: log.disk_level is Level.LOW)
        assert not log.accepting and 0 < log.disk_free_bytes < MIB
        await log.append("request", {"request_id": "in-flight"})  # records still go in
        filler.unlink()
        (fs / "more").unlink()
        await _until(lambda: log.accepting and log.disk_level is Level.OK)
        log.close()
        levels = [r["level"] for r in records(log.directory) if r.get("event") == "audit_disk"]
        assert levels == ["alarm", "low", "ok"]
        assert verify(log.directory, public_key(log.directory), log.witness_path).ok
    assert free(tmp_path) > 0
