"""The Serve half of benchmarks/cluster_bench.py: what the Serve path adds to a request, on the fake engine.

A one-node cluster of bastion's own (``bastion.cluster``: a fresh cluster CA, token, mutual TLS, head on
127.0.0.2) runs one Serve replica of the fake engine behind bastion's router and admission; a child process
(Ray reads its TLS settings once, at import: the driver must set them first) is the front door. It times,
one call at a time, the same calls on the in-process fake engine (the anchor) and through the
``ReplicaEngine`` proxy (streaming handle, router, replica, back): a one-token ``generate`` stream, a
16-token stream, and a unary ``tokenize``. Overhead = Serve p50 - in-process p50 (goal: <= 1 ms p50 for the
one-token stream). Run as a script it is that child.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # testkit/ (its fake engine and free ports), as the front-door child has it

HEAD_IP = "127.0.0.2"
MODEL = "fake-bench"
GOAL_OVERHEAD_MS = 1.0


def _head_settings(base: Path) -> Any:
    from bastion.cluster.pki import create_ca, issue
    from bastion.cluster.settings import PORT_FIELDS, ClusterSettings
    from bastion.cluster.token import write_token
    from testkit.ports import free_port_block

    ca = create_ca(base / "ca")
    issue(base / "ca", "head", [HEAD_IP])
    token = write_token(base / "token")
    first = free_port_block(40)
    singles = [f for f in PORT_FIELDS if f != "gcs_port"]
    return ClusterSettings(
        node_ip=HEAD_IP,
        head_address=f"{HEAD_IP}:{first + 35}",
        gcs_port=first + 35,
        token_file=token,
        tls_cert_file=base / "ca" / "head.pem",
        tls_key_file=base / "ca" / "head.key",
        tls_ca_file=ca.cert,
        temp_dir=base / "t",
        spill_dir=base / "s",
        num_cpus=2,
        object_store_bytes=100 * 1024 * 1024,
        health_check_failure_threshold=30,
        health_check_timeout_ms=30000,
        min_worker_port=first + 10,
        max_worker_port=first + 30,
        **{f: first + i for i, f in enumerate(singles)},
    )


def bench_serve_overhead(n: int) -> dict[str, Any]:
    """Starts the one-node cluster, runs the front-door child, stops the node; the child's figures."""
    from bastion.cluster.node import start_node, stop_node

    base = Path(tempfile.mkdtemp(prefix="bcb-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        settings = _head_settings(base)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "BASTION_"))}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), str(ROOT)])  # testkit: the fake engine
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # the node's workers (the replica) inherit it
        try:
            start_node(settings, head=True)
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        config = base / "head.json"
        config.write_text(settings.model_dump_json())
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, __file__, str(config), str(n)], env=env, capture_output=True, text=True, timeout=600
        )
        if r.returncode != 0:
            raise RuntimeError(f"front-door child failed ({r.returncode}): {r.stderr[-3000:]}")
        out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        out["child_wall_s"] = round(time.perf_counter() - t0, 1)
        return out
    finally:
        stop_node(base / "t", grace_s=3)
        shutil.rmtree(base, ignore_errors=True)


def _ms(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=100)
    return {"p50": round(statistics.median(samples) * 1000, 3), "p95": round(qs[94] * 1000, 3)}


async def _timed(n: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    for _ in range(max(5, n // 10)):  # warm-up: connections, the router's caches
        await call()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t0)
    return out


async def _child(config: Path, n: int) -> dict[str, Any]:
    from bastion.cluster.driver import connect
    from bastion.cluster.pool import DeployOptions, start_replica_pool
    from bastion.cluster.settings import ClusterSettings
    from bastion.cluster.spec import ReplicaSpec
    from bastion.engine.protocol import EngineRequest, SamplingSpec
    from testkit.fakes import FakeEngine

    settings = ClusterSettings.model_validate_json(config.read_text())
    connect(settings, namespace="bastion")

    class Recorder:
        async def replica_event(self, **fields: Any) -> int:
            return 0

    options = DeployOptions(replicas=1, max_ongoing_requests=64, max_queued_requests=64, num_cpus=0.0)
    node_config = config.parent / "replica-node.toml"  # the replica's node-local audit chain lives under it
    node_config.write_text(f'cache_dir = "{config.parent / "replica-cache"}"\n')
    spec = ReplicaSpec(engine="fake", model=MODEL, config_file=node_config.resolve())
    pool = await start_replica_pool([spec], options)
    pool.attach_audit(Recorder())
    served = pool.get(MODEL)
    for _ in range(600):
        if served.is_ready():
            break
        await asyncio.sleep(0.1)
    local = FakeEngine(MODEL)
    ids = iter(range(10**9))

    def stream(engine: Any, tokens: int) -> Callable[[], Awaitable[object]]:
        async def go() -> object:
            req = EngineRequest(f"r{next(ids)}", (1, 2, 3), SamplingSpec(max_tokens=tokens))
            return [o async for o in engine.generate(req)]

        return go

    def tokenize(engine: Any) -> Callable[[], Awaitable[object]]:
        async def go() -> object:
            return await engine.tokenize("hello", None)

        return go

    results: dict[str, Any] = {}
    for name, make in (
        ("generate_1_token", lambda e: stream(e, 1)),
        ("generate_16_tokens", lambda e: stream(e, 16)),
        ("tokenize", tokenize),
    ):
        anchor = _ms(await _timed(n, make(local)))
        serve = _ms(await _timed(n, make(served)))
        results[name] = {
            "in_process_ms": anchor,
            "serve_ms": serve,
            "overhead_p50_ms": round(serve["p50"] - anchor["p50"], 3),
        }
    await pool.shutdown()
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_child(Path(sys.argv[1]), int(sys.argv[2])))))
