"""A real vLLM replica behind Serve (issue 16's end-to-end test), on a two-node cluster (token + mutual TLS).
Run by ``test_cluster_cases.py`` in a pytest process of its own (a Ray driver sets Ray's TLS variables
before Ray is imported); not collected by itself.

The front door is a bastion server (``bastion.server.app.serve``) with ``[cluster] replicas = 1`` and
``replica_pool_factory``: it checks the sealed default model itself (signature, header, key — no weights
decrypted) for its own model record, joins the cluster and deploys one vLLM replica. The replica reads its
**node's own** configuration file (the only thing Ray carries is its path): the same sealed model, opened with
the node's key provider, and a partition key file of its own (created 0600), the root of its EngineCore's
block-hashing key. It proves isolation from inside its EngineCore and worker, is admitted against the front
door's record, and answers through ``bastion generate``; ``bastion audit-isolation`` then finds no
cross-tenant cache hit through it. The replica uses the e2e engine settings (fast start)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cluster_util import Cluster, audit_records, capturing_factory
from grpc_harness import Running, make_settings, running_server
from grpc_health.v1 import health_pb2

from bastion.audit.replica_set import Node, verify_set
from bastion.cluster.pool import ReplicaEngine, ReplicaPool
from bastion.cluster.spec import ReplicaSpec
from bastion.config import default_cache_dir, load_settings
from bastion.models.resolve import served_name
from cli_util import run_cli

# The e2e engine settings (tests/e2e/conftest.py: DEFAULT_MODEL_TOML), and a fixed context for the front door.
MODEL = {"source": "default", "num_kv_blocks": 96, "cpu_kv_cache_gib": 1, "max_num_seqs": 16, "fast_start": True}
MAX_MODEL_LEN = 2048


def _replica_config(base: Path) -> Path:
    """The replica node's own configuration: its model and key provider, its own partition key file
    (provisioned on the node: a configured key file that is missing is refused, never made up)."""
    key = base / "node-keys" / "partition.key"
    key.parent.mkdir(mode=0o700)
    key.write_bytes(secrets.token_bytes(32))
    key.chmod(0o600)
    lines = ["[model]"] + [f"{k} = {json.dumps(v)}" for k, v in MODEL.items()] + [f"max_model_len = {MAX_MODEL_LEN}"]
    lines += ["[isolation]", f'partition_key_file = "{base / "node-keys" / "partition.key"}"']
    lines += ["[audit]", f'dir = "{base / "node-audit"}"']  # the replica's node-local chain
    path = base / "replica-node.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
async def server(live_cluster: Cluster) -> AsyncIterator[tuple[Running, ReplicaPool]]:
    node_config = _replica_config(live_cluster.base)
    head = load_settings(str(live_cluster.head.config)).cluster.model_copy(
        update={
            "replicas": 1,
            "replica_config_file": node_config,
            "replica_num_cpus": 0.0,
            "replica_env": {"OMP_NUM_THREADS": "2"},  # Ray gives a worker 1 OMP thread by default
            "replica_health_check_timeout_s": 60.0,
        }
    )
    # The machine's model cache, which the replica node's config uses too (its default): both hold the one
    # sealed artefact (another cache would seal the model anew, with other digests, and admission refuses).
    settings = make_settings(
        extra={
            "cluster": head.model_dump(mode="json"),
            "model": {**MODEL, "max_model_len": MAX_MODEL_LEN},
            "cache_dir": str(default_cache_dir()),
            # Not what this test is about, and minutes of CPU here: drift canaries and red-team probes.
            "assurance": {"drift": {"enabled": False}, "redteam": {"enabled": False}},
        }
    )
    spec = ReplicaSpec(engine="vllm", model=served_name(settings), config_file=node_config)
    factory, built = capturing_factory(settings, spec)

    try:
        async with running_server(settings=settings, pool_factory=factory, wait_ready=False) as srv:
            deadline = time.monotonic() + 600
            while not [r for r in _audit(srv) if r.get("event") == "replica_joined"]:
                assert time.monotonic() < deadline, "the vLLM replica never reported"
                await asyncio.sleep(1.0)
            await srv.wait_health(health_pb2.HealthCheckResponse.SERVING, timeout=30)
            yield srv, built[0]
    finally:
        import ray

        ray.shutdown()  # Ray's variables stay: the next module's driver joins the same cluster (live_cluster.py)


def _audit(srv: Running) -> list[dict[str, Any]]:
    return audit_records(srv.audit_dir)


def _key_file(srv: Running, who: str) -> Path:
    path = srv.audit_dir.parent / f"{who}.key"
    path.write_text(srv.identity.keys[who])
    path.chmod(0o600)
    return path


async def _cli(srv: Running, *args: str, who: str = "alice", timeout: float = 600) -> tuple[int, str, str]:
    """``bastion`` as a child process against the front door (asynchronously: the server runs in this event
    loop, and a blocking wait would stop it answering)."""
    return await run_cli(*args, "--target", srv.address, "--api-key-file", str(_key_file(srv, who)), timeout=timeout)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def test_the_replicas_engine_core_was_forked_from_its_preloaded_process(server: tuple[Running, ReplicaPool]) -> None:
    """On CPU the replica's EngineCore comes from the forkserver its actor started (bastion.engine.vllm.forkserver),
    not spawned: the actor set RAY_ADDRESS first, as vLLM does for a spawned one, so the environments agree."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    actors = {p for p in pids if _cmdline(p).startswith("ray::ServeReplica:bastion-")}
    children = {p: _cmdline(p)[:100] for p in pids if _parent(p) in actors}
    forkservers = [p for p, cmd in children.items() if "from multiprocessing.forkserver import main" in cmd]
    assert actors and forkservers, f"no forkserver under the replica's actor {actors}: {children}"
    # The EngineCore runs as the forkserver's child (the probe that checked the environment has exited) ...
    assert [p for p in pids if _parent(p) in forkservers], f"nothing forked from {forkservers}"
    # ... and none was spawned beside it.
    assert not [cmd for cmd in children.values() if "multiprocessing.spawn" in cmd], children


def test_the_replica_was_admitted_on_its_proof_and_the_front_doors_record(
    live_cluster: Cluster, server: tuple[Running, ReplicaPool]
) -> None:
    srv, pool = server
    (engine,) = pool.all()
    assert isinstance(engine, ReplicaEngine)
    (joined,) = [r for r in _audit(srv) if r.get("event") == "replica_joined"]
    assert joined["decision"] == "admitted", joined.get("reason")
    assert joined["model_digest"] == engine.info.digest and engine.info.subject_digest  # sealed and signed
    # The node's own chain says how the model was opened there, and holds the checkpoint the join record kept.
    node_audit = live_cluster.base / "node-audit"
    (chain,) = (node_audit / "replicas").iterdir()
    assert chain.name == joined["replica"]
    (loaded,) = [r for r in audit_records(chain) if r.get("event") == "model_loaded"]
    assert loaded["model_digest"] == engine.info.digest and loaded["node"] == joined["node"]
    assert loaded["reason"] == (
        f"sealed weights opened with this node's file key provider; signature subject {engine.info.subject_digest}"
    )
    node = Node(node_audit, node_audit / "keys" / "signing.pub")
    checked = verify_set(srv.audit_dir, srv.audit_dir / "keys" / "signing.pub", None, [node])
    assert checked.ok and checked.joins_checked == 1, checked.problems


async def test_paris_through_bastion_generate_names_the_replica(server: tuple[Running, ReplicaPool]) -> None:
    srv, pool = server
    model = pool.all()[0].info.name
    rc, out, err = await _cli(srv, "generate", "--model", model, "--max-tokens", "12", "What is the capital of France?")
    assert rc == 0, err[-2000:]
    assert "Paris" in out
    (joined,) = [x for x in _audit(srv) if x.get("event") == "replica_joined"]
    requests = [x for x in _audit(srv) if x["kind"] == "request" and x.get("method", "").endswith("/Generate")]
    assert requests and requests[-1]["status"] == "OK" and requests[-1]["replica"] == joined["replica"]


async def test_the_isolation_self_audit_through_the_replica_finds_no_cross_tenant_hit(
    server: tuple[Running, ReplicaPool], tmp_path: Path
) -> None:
    srv, _ = server
    out = tmp_path / "audit.json"
    other = _key_file(srv, "bob")
    rc, _, err = await _cli(
        srv,
        "audit-isolation",
        "--other-api-key-file",
        str(other),
        "--samples",
        "6",  # 6 hits all faster than 6 misses: exact one-sided KS p = 0.001
        "--prompt-words",
        "300",
        "--seed",
        "5",
        "--out",
        str(out),
    )
    assert out.exists(), err[-2000:]
    report = json.loads(out.read_text())
    within, across = report["within_tenant"], report["across_tenants"]
    assert within["max_cached_prompt_tokens_hit"] > 0  # the audit has power: a tenant's own prefix is cached
    assert across["max_cached_prompt_tokens_hit"] == 0
    confirmation = report["across_tenants_confirmation"]  # run only after a (chance) timing difference
    assert (confirmation is None) is (not across["distinguishable"])
    assert confirmation is None or (
        confirmation["max_cached_prompt_tokens_hit"] == 0 and not confirmation["distinguishable"]
    )
    assert rc == 0 and report["passed"], report["verdict"]
