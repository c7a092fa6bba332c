"""The durability rule under SIGKILL: every append that returned is on disk, and the log recovers and verifies.

A child process appends from many concurrent tasks and prints each acknowledged seq as soon as ``append``
returns; it is killed mid-load (three times, each run recovering the previous one's log), then the log is
recovered and verified and every acknowledged record is looked up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from audit_util import public_key, records, settings

from bastion.audit import AuditLog, verify

CHILD = r"""
import asyncio, sys
from pathlib import Path
from bastion.audit import AuditLog, AuditSettings

async def main() -> None:
    tmp = Path(sys.argv[1])
    log = AuditLog.open(AuditSettings(dir=tmp / "audit", checkpoint_every_records=50), tmp)
    print("ready", flush=True)

    async def worker(w: int) -> None:
        i = 0
        while True:
            rid = f"{sys.argv[2]}-w{w}-{i}"
            seq = await log.append("request", {"request_id": rid})
            sys.stdout.write(f"{seq} {rid}\n")
            sys.stdout.flush()
            i += 1

    await asyncio.gather(*(worker(w) for w in range(32)))

asyncio.run(main())
"""

PYTHON_SRC = Path(__file__).resolve().parents[2] / "python"


def _run_and_kill(tmp: Path, run: str, acks_wanted: int) -> dict[int, str]:
    env = {**os.environ, "PYTHONPATH": str(PYTHON_SRC)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp), run], stdout=subprocess.PIPE, env=env)
    assert child.stdout is not None
    acked: dict[int, str] = {}
    deadline = time.monotonic() + 120
    try:
        assert child.stdout.readline() == b"ready\n"
        while len(acked) < acks_wanted:
            assert time.monotonic() < deadline, "the child acknowledged too few records"
            line = child.stdout.readline()
            assert line.endswith(b"\n"), "the child stopped early"
            seq, rid = line.decode().split()
            acked[int(seq)] = rid
        assert child.poll() is None, "the child must still be under load when killed"
        os.kill(child.pid, signal.SIGKILL)
        # Acknowledgements printed before the kill landed count too (only complete lines).
        for line in child.stdout.read().splitlines(keepends=True):
            if line.endswith(b"\n"):
                seq, rid = line.decode().split()
                acked[int(seq)] = rid
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return acked


def test_every_acknowledged_record_survives_sigkill(tmp_path: Path) -> None:
    acked: dict[int, str] = {}
    for run in ("a", "b", "c"):
        got = _run_and_kill(tmp_path, run, acks_wanted=600)
        assert not set(got) & set(acked), "a seq was acknowledged twice"
        acked |= got
    log = AuditLog.open(settings(tmp_path), tmp_path)  # recovery: cuts a torn tail, continues the chain
    log.close()
    d = log.directory
    r = verify(d, public_key(d), log.witness_path)
    assert r.ok, r.problem_line()
    on_disk = {rec["seq"]: rec.get("request_id") for rec in records(d)}
    missing = {seq: rid for seq, rid in acked.items() if on_disk.get(seq) != rid}
    assert not missing, f"{len(missing)} acknowledged records are missing or differ"
    starts = [rec for rec in records(d) if rec["kind"] == "start"]
    assert len(starts) == 4
