"""The live cluster cases, in a pytest process of their own on one two-node cluster (``live_cluster.py``):
their front door is a Ray driver, and a driver must set Ray's TLS variables before anything imports Ray
(Ray's core reads them once, when it loads; ``driver.connect`` refuses otherwise) — in this session other
tests import Ray first.

* ``live_cases.py`` (first, before any replica listens): the nodes' token auth, mutual TLS, secrets and
  ports;
* ``pool_cases.py``: a bastion server over two fake-engine Serve replicas (routing, admission, failover,
  cancellation, deadlines, back-pressure, what Ray can read) — about 60-90 s here;
* ``vllm_replica_cases.py``: one real vLLM replica (sealed model, node-local key, isolation proof, Paris
  through ``bastion generate``, ``bastion audit-isolation``) — about 3 minutes here.
"""

from __future__ import annotations

from pathlib import Path

from cluster_util import run_cases

HERE = Path(__file__).parent


def test_the_live_cluster_cases() -> None:
    run_cases([HERE / f for f in ("live_cases.py", "pool_cases.py", "vllm_replica_cases.py")], timeout=1500)
