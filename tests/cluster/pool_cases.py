"""Serve replicas of a fake engine behind the engine seam, on a real two-node cluster (token + mutual TLS).
Run by ``test_cluster_pool.py`` in a pytest process of its own (see there); not collected by itself.

That process is the front door: it joins as a Ray driver with bastion's own code (``replica_pool_factory``:
``connect`` with the head's ``[cluster]`` credentials), starts Serve with no proxy and deploys two
fake-engine replicas; the cases drive the :class:`ReplicaEngine` proxy as a servicer would. Serve starts
once; the driver leaves (``ray.shutdown``) and the nodes stop in the fixtures' finalizers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from cluster_util import Cluster, listening_ports, running_cluster

from bastion.cluster.node import node_processes
from bastion.cluster.pool import ReplicaEngine, ReplicaPool, replica_pool_factory
from bastion.cluster.spec import FakeEngineSpec, ReplicaSpec
from bastion.config import load_settings
from bastion.engine.process import EngineProcessEnv
from bastion.engine.protocol import ChatTurn, EngineOutput, EngineRequest, SamplingSpec
from bastion.errors import Overloaded
from bastion.server.status import status_code
from testkit.fakes import FAKE_DIGEST

MODEL = "fake-replicated"
TOKEN_DELAY = 0.05
MAX_ONGOING = 2  # per replica: 2 replicas take 4 streams at once


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as c:
        yield c


@pytest.fixture(scope="module")
async def pool(cluster: Cluster) -> AsyncIterator[ReplicaPool]:
    saved = dict(os.environ)  # connect() sets Ray's variables in this process
    settings = load_settings(str(cluster.head.config))
    settings = settings.model_copy(
        update={
            "cluster": settings.cluster.model_copy(
                update={
                    "replicas": 2,
                    "replica_max_ongoing_requests": MAX_ONGOING,
                    "replica_max_queued_requests": 1,
                    "replica_num_cpus": 0.0,
                    "replica_health_check_period_s": 1.0,
                    "replica_health_check_timeout_s": 10.0,
                }
            )
        }
    )
    spec = ReplicaSpec(engine="fake", model=MODEL, fake=FakeEngineSpec(token_delay=TOKEN_DELAY))
    try:
        built = await replica_pool_factory(settings, spec)(EngineProcessEnv())
        assert isinstance(built, ReplicaPool)
        yield built
        await built.shutdown()
    finally:
        import ray

        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


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


async def _until_aborted(engine: ReplicaEngine, request_id: str, timeout: float = 15.0) -> dict[str, Any]:
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


def _refuses_plaintext(port: int) -> bool:
    """An HTTP/2 preface in clear gets no HTTP/2 answer: the TLS server closes or sends a TLS alert."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        try:
            reply = s.recv(64)
        except ConnectionResetError:
            reply = b""
    return reply == b"" or reply[0] == 0x15  # 0x15: a TLS alert record


def test_serve_runs_no_proxy_and_replicas_listen_only_with_mutual_tls(cluster: Cluster, pool: ReplicaPool) -> None:
    allowed = cluster.head.ports() | cluster.worker.ports()
    pids = node_processes(cluster.head.temp_dir) + node_processes(cluster.worker.temp_dir)
    ports = listening_ports(pids)
    assert not {8000, 9000} & ports  # Serve's HTTP and gRPC proxies' defaults: no proxy runs
    # Each replica's inter-deployment gRPC server takes a random port on all interfaces (Serve 2.60 starts it
    # unconditionally; bastion does not use it): mutual TLS with the cluster CA, like the rest of Ray.
    extra = sorted(ports - allowed)
    assert len(extra) <= 2 * 2, extra  # the replicas, and those replaced
    for port in extra:
        assert _refuses_plaintext(port), port
