"""Serve replicas behind the engine seam (``bastion.cluster.pool``), live: the cases are in ``pool_cases.py``
and run in a pytest process of their own, because the front door they play is a Ray driver, and a driver
must set Ray's TLS variables before anything imports Ray (Ray's core reads them once, when it loads;
``driver.connect`` refuses otherwise). In this session other tests import Ray first. One cluster and one
Serve instance serve all the cases (about 45-65 s here)."""

from __future__ import annotations

from pathlib import Path

from cluster_util import run_python

CASES = Path(__file__).with_name("pool_cases.py")


def test_serve_replicas_behind_the_engine_seam() -> None:
    r = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(CASES)], timeout=420)
    out = r.stdout[-8000:] + r.stderr[-3000:]
    assert r.returncode == 0, out
    summary = [ln for ln in r.stdout.splitlines() if " passed" in ln]
    assert summary and "failed" not in summary[-1] and "error" not in summary[-1], out
