"""A real vLLM replica behind Serve, end to end (``vllm_replica_cases.py``, in a pytest process of its own:
the front door is a Ray driver, which must set Ray's TLS variables before Ray is imported). Starts one vLLM
engine inside a Serve replica with the e2e engine settings (fast start): about 2-3 minutes here."""

from __future__ import annotations

from pathlib import Path

from cluster_util import run_python

CASES = Path(__file__).with_name("vllm_replica_cases.py")


def test_a_vllm_replica_serves_through_the_front_door() -> None:
    r = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(CASES)], timeout=900)
    out = r.stdout[-8000:] + r.stderr[-3000:]
    assert r.returncode == 0, out
    summary = [ln for ln in r.stdout.splitlines() if " passed" in ln]
    assert summary and "failed" not in summary[-1] and "error" not in summary[-1], out
