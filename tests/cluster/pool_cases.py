"""Serve replicas of a fake engine behind the engine seam, on a real two-node cluster (token + mutual TLS).
Run by ``test_cluster_cases.py`` in a pytest process of its own (see there); not collected by itself.

That process runs the front door: a bastion server whose pool is ``replica_pool_factory``'s (it joins as a
Ray driver with the head's ``[cluster]`` credentials, derives the routing secret from the server's partition
key file, starts Serve with no proxy and deploys two fake-engine replicas behind bastion's router). The cases
call the server, or drive its :class:`ReplicaEngine` proxy as a servicer would, and read its audit log. The
driver leaves (``ray.shutdown``) when the module ends; the nodes stop with the session (conftest.py).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cluster_util import WORKER_IP, Cluster, audit_records, capturing_factory, listening_ports, start_node
from grpc_harness import Running, collect, make_settings, prompt_request, running_server
from grpc_health.v1 import health_pb2

from bastion.audit.replica_set import Node, parse_checkpoint, verify_set
from bastion.cluster.admission import Admission, Expected, register
from bastion.cluster.node import node_processes, stop_node
from bastion.cluster.pool import (
    DeploymentWatch,
    DeployOptions,
    ReplicaEngine,
    ReplicaPool,
    deploy,
    expected_record,
    versions,
)
from bastion.cluster.spec import FakeEngineSpec, ReplicaSpec
from bastion.config import load_settings
from bastion.engine.protocol import ChatTurn, EngineOutput, EngineRequest, SamplingSpec
from bastion.errors import Overloaded, Unavailable
from bastion.isolation.tag import PartitionTag
from bastion.server.status import status_code
from bastion.tenancy.partition import PartitionKeys
from testkit.fakes import FAKE_DIGEST

MODEL = "fake-replicated"
TOKEN_DELAY = 0.05
MAX_ONGOING = 2  # per replica: 2 replicas take 4 streams at once
BLOCK = 16  # cluster.routing_block_tokens here: the key covers the first 2 blocks (32 tokens)
SECRET = secrets.token_bytes(32)


class Recorder:
    """The front door's audit recorder as the pool sees it: keeps the replica records."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def replica_event(self, **fields: Any) -> int:
        self.records.append(fields)
        return len(self.records)

    def of(self, model: str, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["model"] == model and r["event"] == event]


RECORDER = Recorder()


async def _until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def server(live_cluster: Cluster) -> AsyncIterator[tuple[Running, ReplicaPool]]:
    """A bastion server (``bastion.server.app.serve``, as ``bastion serve`` runs it) whose pool is
    ``replica_pool_factory``'s: two replicas of the fake engine on the cluster, its real audit log."""
    head = load_settings(str(live_cluster.head.config)).cluster.model_copy(
        update={
            "replicas": 2,
            "replica_max_ongoing_requests": MAX_ONGOING,
            "replica_max_queued_requests": 1,
            "replica_num_cpus": 0.0,
            "replica_health_check_period_s": 1.0,
            "replica_health_check_timeout_s": 10.0,
            "routing_block_tokens": BLOCK,
        }
    )
    key_file = Path(live_cluster.base) / "partition.key"  # the server's partition secret: the routing secret's root
    key_file.write_bytes(SECRET)
    key_file.chmod(0o600)
    settings = make_settings(
        extra={"cluster": head.model_dump(mode="json"), "isolation": {"partition_key_file": str(key_file)}}
    )
    node_config = Path(live_cluster.base) / "replica-node.toml"  # each replica's node-local audit chain is under it
    node_config.write_text(f'cache_dir = "{live_cluster.base / "replica-cache"}"\n')
    spec = ReplicaSpec(
        engine="fake", model=MODEL, fake=FakeEngineSpec(token_delay=TOKEN_DELAY), config_file=node_config
    )
    factory, built = capturing_factory(settings, spec)

    try:
        async with running_server(settings=settings, pool_factory=factory, wait_ready=False) as srv:
            await srv.wait_health(health_pb2.HealthCheckResponse.SERVING, timeout=120)
            assert len(_engine(built[0]).admission.admitted()) >= 1
            await _until(lambda: len(_engine(built[0]).admission.admitted()) == 2, "both replicas admitted")
            yield srv, built[0]
    finally:
        import ray

        ray.shutdown()  # Ray's variables stay: the next module's driver joins the same cluster (live_cluster.py)


@pytest.fixture
def pool(server: tuple[Running, ReplicaPool]) -> ReplicaPool:
    return server[1]


def _audit(srv: Running) -> list[dict[str, Any]]:
    return audit_records(srv.audit_dir)


def _replica_records(srv: Running, event: str) -> list[dict[str, Any]]:
    return [r for r in _audit(srv) if r.get("event") == event and r.get("model") == MODEL]


def _engine(pool: ReplicaPool) -> ReplicaEngine:
    engine = pool.get(MODEL)
    assert isinstance(engine, ReplicaEngine)
    return engine


def _request(request_id: str, max_tokens: int) -> EngineRequest:
    return EngineRequest(request_id, (1, 2, 3), SamplingSpec(max_tokens=max_tokens))


async def _records(engine: ReplicaEngine) -> dict[str, dict[str, Any]]:
    """Each replica's fake-engine record, by replica id (Serve routes each call to one of them)."""
    from ray.serve.exceptions import BackPressureError  # not at the top: ray before connect() means no TLS

    handle = engine._handle
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(40):
        try:
            rec = await handle.fake_record.remote()
        except BackPressureError:  # replicas still full of streams being cancelled: their slots free soon
            await asyncio.sleep(0.1)
            continue
        seen[rec["replica"]] = rec
        if len(seen) == 2:
            break
    return seen


async def _until_aborted(engine: ReplicaEngine, request_id: str, timeout: float = 30.0) -> dict[str, Any]:
    # Serve delivers a cancellation to the replica asynchronously; under CI load (two cores, engines booting
    # beside) it once took longer than 15 s for the eight streams of the back-pressure case.
    deadline = time.monotonic() + timeout
    while True:
        for rec in (await _records(engine)).values():
            if request_id in rec["aborted"] and request_id in rec["closed"]:
                return rec
        assert time.monotonic() < deadline, f"{request_id} was not aborted on any replica"
        await asyncio.sleep(0.2)


async def test_pool_is_ready_with_the_replicas_model(pool: ReplicaPool) -> None:
    engine = _engine(pool)
    assert engine.info.name == MODEL and engine.info.digest == FAKE_DIGEST
    assert pool.is_ready() and not pool.any_dead()
    assert len(await _records(engine)) == 2  # two replicas answer


async def test_streamed_generate_returns_the_tokens_in_order(pool: ReplicaPool) -> None:
    outs: list[EngineOutput] = [o async for o in _engine(pool).generate(_request("stream-1", 6))]
    assert [o.text for o in outs] == [f"w{i} " for i in range(6)]
    assert [o.token_ids for o in outs] == [(1000 + i,) for i in range(6)]
    assert [o.finished for o in outs] == [False] * 5 + [True] and outs[-1].finish_reason == "length"
    assert outs[-1].prompt_tokens == 3 and outs[-1].completion_tokens == 6


async def test_tokenize_is_a_unary_call(pool: ReplicaPool) -> None:
    engine = _engine(pool)
    assert await engine.tokenize("héllo", None) == list("héllo".encode())
    turns = [ChatTurn("user", "hi")]
    assert await engine.tokenize(None, turns) == list(b"<user>hi<assistant>")


async def test_each_replica_was_admitted_on_its_join_report_and_recorded_first(
    server: tuple[Running, ReplicaPool],
) -> None:
    srv, pool = server
    joined = _replica_records(srv, "replica_joined")
    assert len(joined) == 2 and {r["decision"] for r in joined} == {"admitted"}
    assert {r["replica"] for r in joined} == set(_engine(pool).admission.admitted())
    for r in joined:
        assert r["kind"] == "decision" and r["principal"] == "bastion:cluster"
        assert r["model_digest"] == FAKE_DIGEST and len(r["node"]) == 56  # Ray's node id (hex)
        assert parse_checkpoint(r["replica_checkpoint"]) is not None  # its node-local chain at join


async def test_a_call_through_the_server_runs_on_a_replica_its_record_names(
    server: tuple[Running, ReplicaPool],
) -> None:
    srv, _ = server
    replies = await collect(srv.stub.Generate(prompt_request(model=MODEL, max_tokens=3), timeout=30))
    assert replies[-1].finish_reason and replies[0].model_digest == FAKE_DIGEST
    rid = replies[0].request_id
    (rec,) = [r for r in _audit(srv) if r["kind"] == "request" and r.get("request_id") == rid]
    assert rec["status"] == "OK" and rec["replica"] in {r["replica"] for r in _replica_records(srv, "replica_joined")}


def _tenant_request(keys: PartitionKeys, tenant: str, request_id: str, prompt: list[int]) -> EngineRequest:
    tag = PartitionTag(keys.salt_for(tenant), 0, 0, 0, cache_key=keys.cache_key(tenant, "p", "tenant"))
    return EngineRequest(request_id, tuple(prompt), SamplingSpec(max_tokens=1), cache_salt=tag.encode())


async def _replica_of(engine: ReplicaEngine, request: EngineRequest) -> str:
    outs = [o async for o in engine.generate(request)]
    assert outs[-1].finished
    return outs[0].replica


async def test_a_tenants_requests_share_a_replica_and_tenants_are_keyed_apart(pool: ReplicaPool) -> None:
    engine = _engine(pool)
    keys = PartitionKeys(SECRET)
    system = list(range(1, 2 * BLOCK + 1))  # two full blocks: what the routing key covers
    placed: dict[str, str] = {}
    for t in range(16):
        tenant = f"tenant-{t}"
        seen = {
            await _replica_of(engine, _tenant_request(keys, tenant, f"aff-{t}-{i}", system + [500 + i] * (i + 1)))
            for i in range(3)
        }
        assert len(seen) == 1, (tenant, seen)  # same first blocks, same tenant: same replica
        placed[tenant] = seen.pop()
    assert len(set(placed.values())) == 2  # 16 tenants' keys spread over both replicas
    same_prompt = [engine.routing_key(_tenant_request(keys, f"tenant-{t}", "k", system)) for t in range(16)]
    assert len(set(same_prompt)) == 16  # the same prompt from 16 tenants: 16 unrelated routing keys


async def _a_replica_on_the_worker(engine: ReplicaEngine) -> set[str]:
    """The admitted replicas on the worker node. Serve spreads replicas over the nodes only as best it can
    (both may land on the head): a replica on the head is then killed until Serve places one on the worker."""
    import ray

    (worker,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] == WORKER_IP]
    for _ in range(6):
        await _until(lambda: len(engine.admission.admitted()) == 2, "two admitted replicas")
        admitted = engine.admission.admitted()
        nodes = {r: n for r, n in engine.admission.nodes().items() if r in admitted}
        on_worker = {r for r, n in nodes.items() if n == worker}
        if on_worker:
            return on_worker
        victim = sorted(nodes)[0]
        ray.kill(ray.get_actor(f"SERVE_REPLICA::{engine.app_name}#engine#{victim}", namespace="serve"))
        await _until(lambda v=victim: v not in engine.admission.admitted(), "the killed replica gone")
    raise AssertionError("Serve never placed a replica on the worker node")


async def test_a_node_removed_ends_its_streams_unavailable_and_new_calls_go_to_the_node_left(
    live_cluster: Cluster, server: tuple[Running, ReplicaPool]
) -> None:
    srv, pool = server
    engine = _engine(pool)
    on_worker = await _a_replica_on_the_worker(engine)
    stream = None
    for i in range(64):  # the router keys on the prompt: find one routed to the worker's replica
        it = engine.generate(EngineRequest(f"node-{i}", (9, i, 7), SamplingSpec(max_tokens=400)))
        first = await anext(it)
        if first.replica in on_worker:
            stream = it
            break
        await it.aclose()
    assert stream is not None, "no prompt was routed to the worker's replica"
    try:
        await asyncio.to_thread(stop_node, live_cluster.worker.temp_dir, grace_s=3)  # the node is gone
        with pytest.raises(Unavailable) as info:
            while True:
                await anext(stream)
        assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
        for i in range(4):  # new calls go to the node left
            outs = [o async for o in engine.generate(_request(f"after-node-{i}", 2))]
            assert outs[-1].finished and outs[0].replica not in on_worker
        gone = lambda: on_worker <= {r["replica"] for r in _replica_records(srv, "replica_left")}  # noqa: E731
        await _until(gone, "replica_left of the removed node's replica")
    finally:
        await asyncio.to_thread(start_node, live_cluster.worker, "start-worker", "--address", live_cluster.address)
    await _until(lambda: len(engine.admission.admitted()) == 2, "two admitted replicas again", timeout=90)


async def test_cancelling_the_consumer_aborts_the_replicas_request(pool: ReplicaPool) -> None:
    engine = _engine(pool)
    got: list[EngineOutput] = []

    async def consume() -> None:
        async for out in engine.generate(_request("cancel-1", 400)):  # 20 s if nothing stops it
            got.append(out)

    task = asyncio.ensure_future(consume())
    while len(got) < 2:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rec = await _until_aborted(engine, "cancel-1")
    assert "cancel-1" in rec["requests"]
    assert engine.stats().running == 0


async def test_abort_then_close_as_the_servicer_does_aborts_the_replicas_request(pool: ReplicaPool) -> None:
    engine = _engine(pool)
    it = engine.generate(_request("abort-1", 400))
    await anext(it)
    await engine.abort("abort-1")  # server/generate.py: abort, then aclose
    await it.aclose()  # type: ignore[attr-defined]  # an async generator: ReplicaEngine._generate
    await _until_aborted(engine, "abort-1")


async def test_back_pressure_ends_the_call_with_resource_exhausted(pool: ReplicaPool) -> None:
    engine = _engine(pool)
    streams = [engine.generate(_request(f"busy-{i}", 400)) for i in range(2 * MAX_ONGOING)]
    for it in streams:
        await anext(it)  # every replica slot now runs a stream
    queued = asyncio.ensure_future(anext(engine.generate(_request("queued", 400))))
    try:
        await asyncio.sleep(1.0)
        assert not queued.done()  # waits for a slot: the queue (max_queued_requests = 1) is full now
        t0 = time.monotonic()
        with pytest.raises(Overloaded) as info:
            await anext(engine.generate(_request("refused", 5)))
        assert time.monotonic() - t0 < 5
        assert status_code(info.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        queued.cancel()
        for it in streams:
            await it.aclose()  # type: ignore[attr-defined]  # async generators
    for i in range(2 * MAX_ONGOING):
        await _until_aborted(engine, f"busy-{i}")


async def test_a_clients_deadline_aborts_the_replicas_request(server: tuple[Running, ReplicaPool]) -> None:
    srv, pool = server
    call = srv.stub.Generate(prompt_request(model=MODEL, max_tokens=200), timeout=1.5)  # 10 s of tokens
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(call)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    rid = dict(await call.initial_metadata())["x-request-id"]
    await _until_aborted(_engine(pool), rid)  # the replica stopped generating for nobody


def test_no_secret_reaches_rays_state_or_files(live_cluster: Cluster, server: tuple[Running, ReplicaPool]) -> None:
    """What any token holder can read — the GCS's actor and job tables (the state API itself needs the
    dashboard, which is off), Serve's status and deployment configs, the nodes' logs and session files —
    holds neither the partition secret, nor the routing secret derived from it, nor the cluster token."""
    import ray
    import ray._private.state as gcs_state
    from ray import serve

    srv, _ = server
    keys = PartitionKeys(SECRET)
    secrets_ = {
        "partition secret": SECRET,
        "partition secret (hex)": SECRET.hex().encode(),
        "routing secret": keys.routing_secret(),
        "routing secret (hex)": keys.routing_secret().hex().encode(),
        "cluster token": live_cluster.token(),
    }
    state = "\n".join(
        [
            repr(gcs_state.actors()),
            repr(gcs_state.jobs()),
            repr(serve.status()),
            repr(ray.get_runtime_context().runtime_env),
            repr([app.deployments for app in serve.status().applications.values()]),
        ]
    ).encode()
    for what, value in secrets_.items():
        assert value not in state, f"the {what} in Ray's state"
    for node in (live_cluster.head, live_cluster.worker):
        for d in (node.temp_dir, Path(str(node.fields["spill_dir"]))):
            for path in d.rglob("*"):
                if path.is_file() and not path.is_symlink() and path.stat().st_size < 50_000_000:
                    blob = path.read_bytes()
                    for what, value in secrets_.items():
                        assert value not in blob, f"the {what} in {path}"


async def test_a_replica_with_another_model_or_no_isolation_proof_never_gets_traffic(pool: ReplicaPool) -> None:
    assert pool.is_ready()  # the cluster and Serve run (the rogues join the same Serve instance)
    rogues = {
        "fake-other-digest": FakeEngineSpec(digest="blake3:" + "cd" * 32),
        "fake-no-isolation": FakeEngineSpec(isolation_proof=False),
    }
    options = DeployOptions(replicas=1, max_ongoing_requests=2, max_queued_requests=4, num_cpus=0.0)
    watch = DeploymentWatch(1.0)
    specs = [ReplicaSpec(engine="fake", model=model, fake=fake) for model, fake in rogues.items()]
    admissions = [Admission(spec.app_name, Expected(expected_record(spec), *versions())) for spec in specs]
    for adm in admissions:
        register(adm)
    handles = [await asyncio.to_thread(deploy, spec, options) for spec in specs]
    engines = [ReplicaEngine(h, adm, watch) for h, adm in zip(handles, admissions, strict=True)]
    await asyncio.to_thread(watch.start)
    rogue_pool = ReplicaPool(engines, watch)
    rogue_pool.attach_audit(RECORDER)
    try:
        await _until(lambda: all(RECORDER.of(m, "replica_joined") for m in rogues), "the rogue replicas' records")
        digest, proof = (RECORDER.of(m, "replica_joined")[0] for m in rogues)
        assert digest["decision"] == "refused" and "model digest differs" in digest["reason"]
        assert proof["decision"] == "refused"
        assert proof["reason"] == "no proof of tenant isolation: plugin, block_hasher, tenant_scheduler not installed"
        calls = []
        for e in engines:
            assert not e.admission.admitted() and not e.is_ready()
            calls.append(asyncio.ensure_future(e.tokenize("x", None)))
        await asyncio.sleep(3.0)
        for call in calls:
            assert not call.done()  # never routed: the router has no replica for it
            call.cancel()
    finally:
        await rogue_pool.shutdown()  # the rogue applications are deleted


async def test_a_replica_whose_engine_died_is_replaced_by_serve(pool: ReplicaPool) -> None:
    engine = _engine(pool)
    before = set(await _records(engine))
    dead = await engine._handle.fake_die.remote()  # that replica's check_health raises from now on
    assert dead in before
    deadline = time.monotonic() + 60
    while True:
        now = set(await _records(engine))  # new calls keep being answered meanwhile
        if dead not in now and len(now) == 2:
            break
        assert time.monotonic() < deadline, "Serve did not replace the replica whose engine died"
        await asyncio.sleep(0.5)
    outs = [o async for o in engine.generate(_request("after-replacement", 3))]
    assert outs[-1].finished
    assert pool.is_ready() and not pool.any_dead()


async def test_a_replica_killed_mid_stream_ends_the_stream_unavailable_with_retry_info(
    server: tuple[Running, ReplicaPool],
) -> None:
    import ray

    engine = _engine(server[1])
    it = engine.generate(_request("killed-1", 400))
    first = await anext(it)
    victim = first.replica
    actor = ray.get_actor(f"SERVE_REPLICA::{engine.app_name}#engine#{victim}", namespace="serve")
    ray.kill(actor, no_restart=True)
    with pytest.raises(Unavailable) as info:
        while True:
            await anext(it)
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
    assert status_code(info.value) == grpc.StatusCode.UNAVAILABLE
    # New calls go to the replica left (or the one Serve starts in its place), never to the dead one.
    for i in range(4):
        outs = [o async for o in engine.generate(_request(f"after-kill-{i}", 2))]
        assert outs[-1].finished and outs[0].replica != victim
    srv, _ = server
    await _until(lambda: any(r["replica"] == victim for r in _replica_records(srv, "replica_left")), "replica_left")
    await _until(lambda: len(engine.admission.admitted()) == 2, "a replacement admitted")


def test_the_front_doors_log_and_every_replicas_node_local_chain_verify_as_a_set(
    live_cluster: Cluster, server: tuple[Running, ReplicaPool]
) -> None:
    """After joins, a death, a kill and replacements: each admitted replica's chain still holds the checkpoint
    its join record kept; the chain of the replica whose engine died says so."""
    srv, _ = server
    node = live_cluster.base / "replica-cache" / "audit"  # both nodes run on this machine: one node directory
    checked = verify_set(
        srv.audit_dir, srv.audit_dir / "keys" / "signing.pub", None, [Node(node, node / "keys" / "signing.pub")]
    )
    assert checked.ok, checked.problems
    assert checked.joins_checked == len(_replica_records(srv, "replica_joined")) >= 5
    events = [r.get("event") for c in checked.chains for r in audit_records(c.directory)]
    assert events.count("model_loaded") == len(checked.chains) and events.count("engine_died") == 1


def _refuses_plaintext(port: int) -> bool:
    """An HTTP/2 preface in clear gets no HTTP/2 answer: the TLS server closes or sends a TLS alert."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        try:
            reply = s.recv(64)
        except ConnectionResetError:
            reply = b""
    return reply == b"" or reply[0] == 0x15  # 0x15: a TLS alert record


def test_serve_runs_no_proxy_and_replicas_listen_only_with_mutual_tls(live_cluster: Cluster, pool: ReplicaPool) -> None:
    allowed = live_cluster.head.ports() | live_cluster.worker.ports()
    pids = node_processes(live_cluster.head.temp_dir) + node_processes(live_cluster.worker.temp_dir)
    ports = listening_ports(pids)
    assert not {8000, 9000} & ports  # Serve's HTTP and gRPC proxies' defaults: no proxy runs
    # Each replica's inter-deployment gRPC server takes a random port on all interfaces (Serve 2.60 starts it
    # unconditionally; bastion does not use it): mutual TLS with the cluster CA, like the rest of Ray.
    extra = sorted(ports - allowed)
    assert len(extra) <= 2 * 2, extra  # the replicas, and those replaced
    for port in extra:
        assert _refuses_plaintext(port), port
