"""The replica's body without a cluster: the engine it builds from a spec, streaming, an aborted request
when the caller cancels or closes the stream, and the health check Serve calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.cluster.replica import EngineReplica, build_engine
from bastion.cluster.spec import FakeEngineSpec, ReplicaSpec
from bastion.engine.protocol import EngineOutput, EngineRequest, SamplingSpec
from bastion.errors import FailedPrecondition, Unavailable
from testkit.fakes import FakeEngine


@pytest.fixture
async def made() -> AsyncIterator[list[EngineReplica]]:
    """Replicas made by a test, stopped as Serve stops them (awaiting ``__del__``'s coroutine)."""
    replicas: list[EngineReplica] = []
    yield replicas
    for r in replicas:
        stop = r.__del__()
        if stop is not None:
            await stop
        assert _fake(r).shutdown_called


def _replica(made: list[EngineReplica], **fake: object) -> EngineReplica:
    replica = EngineReplica(ReplicaSpec(engine="fake", model="m", fake=FakeEngineSpec.model_validate(fake)))
    replica._replica_id = "replica-1"  # Serve's id of the replica (outside Serve: set here)
    made.append(replica)
    return replica


def _fake(replica: EngineReplica) -> FakeEngine:
    assert isinstance(replica.engine, FakeEngine)
    return replica.engine


def _request(request_id: str, max_tokens: int) -> EngineRequest:
    return EngineRequest(request_id, (7, 8), SamplingSpec(max_tokens=max_tokens))


async def test_generate_streams_the_engines_outputs_and_does_not_abort_a_finished_request(
    made: list[EngineReplica],
) -> None:
    replica = _replica(made)
    outs: list[EngineOutput] = [o async for o in replica.generate(_request("r1", 3))]
    assert [o.text for o in outs] == ["w0 ", "w1 ", "w2 "] and outs[-1].finished
    assert _fake(replica).aborted == [] and _fake(replica).closed == ["r1"]
    assert [o.replica for o in outs] == ["replica-1", "", ""]  # the first output names the replica
    assert (await replica.info()).name == "m"


async def test_a_cancelled_call_aborts_the_engine_request(made: list[EngineReplica]) -> None:
    replica = _replica(made, token_delay=0.01)
    got: list[EngineOutput] = []

    async def consume() -> None:
        async for out in replica.generate(_request("r2", 1000)):
            got.append(out)

    task = asyncio.ensure_future(consume())
    while len(got) < 2:
        await asyncio.sleep(0.01)
    task.cancel()  # what Serve does to the replica's task when the caller cancels
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _fake(replica).aborted == ["r2"] and _fake(replica).closed == ["r2"]


async def test_closing_the_stream_early_aborts_the_engine_request(made: list[EngineReplica]) -> None:
    replica = _replica(made)
    it = replica.generate(_request("r3", 1000))
    await anext(it)
    await it.aclose()  # type: ignore[attr-defined]  # an async generator
    assert _fake(replica).aborted == ["r3"]


async def test_tokenize_and_stats_pass_through(made: list[EngineReplica]) -> None:
    replica = _replica(made)
    assert await replica.tokenize("ab", None) == [97, 98]
    assert replica.stats().running == 1  # the fake engine's figures


async def test_check_health_raises_once_the_engine_is_dead(made: list[EngineReplica]) -> None:
    replica = _replica(made)
    replica.check_health()
    assert replica.is_ready()
    _fake(replica).die()
    with pytest.raises(Unavailable):
        replica.check_health()
    assert not replica.is_ready()


async def test_a_vllm_replica_starts_its_engine_in_the_background_and_reports_once_it_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bastion.cluster.replica as replica_mod

    release = asyncio.Event()
    engine = FakeEngine("m")

    async def start(spec: ReplicaSpec) -> FakeEngine:
        await release.wait()  # a minute or more for vLLM
        return engine

    monkeypatch.setattr(replica_mod, "start_vllm", start)
    replica = EngineReplica(ReplicaSpec(engine="vllm", model="m", config_file=Path("/etc/bastion/node.toml")))
    replica._replica_id, replica._node_id = "replica-1", "n" * 56  # Serve's and Ray's ids (outside Serve: set)
    replica.check_health()  # starting is healthy
    assert not replica.is_ready() and replica.stats().running == 0
    assert replica.record_routing_stats() == {"running": 0, "waiting": 0}
    call = asyncio.ensure_future(replica.tokenize("ab", None))  # waits for the engine, is not refused
    report = asyncio.ensure_future(replica.record_replica_metadata())
    await asyncio.sleep(0.05)
    assert not call.done() and not report.done()
    release.set()
    assert await call == [97, 98]
    joined = await report
    assert joined["replica"] == "replica-1" and joined["node"] == "n" * 56 and joined["model"] == "m"
    assert joined["isolation"] == {"plugin": False, "block_hasher": False, "tenant_scheduler": False}  # unproven
    assert replica.is_ready()
    stop = replica.__del__()  # Serve's graceful stop
    assert stop is not None
    await stop
    assert engine.shutdown_called


async def test_a_vllm_replica_whose_engine_fails_to_start_fails_its_health_check_and_never_reports() -> None:
    replica = EngineReplica(ReplicaSpec(engine="vllm", model="m"))  # no config file of the node: cannot start
    with pytest.raises(FailedPrecondition, match="names no config file"):
        await replica.record_replica_metadata()
    with pytest.raises(Unavailable, match="failed to start"):
        replica.check_health()  # Serve replaces it
    assert not replica.is_ready()


def test_build_engine_builds_only_the_fake_one() -> None:
    with pytest.raises(FailedPrecondition, match="started by start_vllm"):
        build_engine(ReplicaSpec(engine="vllm", model="m"))
