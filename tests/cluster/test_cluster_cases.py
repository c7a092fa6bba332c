"""The live cluster cases, in a pytest process of their own on one two-node cluster (``live_cluster.py``):
their front door is a Ray driver, and a driver must set Ray's TLS variables before anything imports Ray
(Ray's core reads them once, when it loads; ``driver.connect`` refuses otherwise) — in this session other
tests import Ray first. The process starts when collection ends and runs beside the other test directories
(tests/cluster/conftest.py); this test, run last before the e2e tests, waits for it.

* ``live_cases.py`` (first, before any replica listens): the nodes' token auth, mutual TLS, secrets and
  ports;
* ``pool_cases.py``: a bastion server over two fake-engine Serve replicas (routing, admission, failover,
  cancellation, deadlines, back-pressure, what Ray can read) — about 60-90 s here;
* ``vllm_replica_cases.py``: one real vLLM replica (sealed model, node-local key, isolation proof, Paris
  through ``bastion generate``, ``bastion audit-isolation``) — about 3 minutes here.
"""

from __future__ import annotations

from pathlib import Path

from cluster_util import BACKGROUND, LIVE_CASES, finish_cases, run_cases

HERE = Path(__file__).parent
TIMEOUT_S = 1500


def test_the_live_cluster_cases() -> None:
    bg = BACKGROUND.pop("live", None)
    if bg is None:  # not started at collection (run on its own by node id, say): run them now
        run_cases([HERE / f for f in LIVE_CASES], timeout=TIMEOUT_S)
    else:
        finish_cases(bg, TIMEOUT_S)
