"""The replica's body without a cluster: the engine it builds from a spec, streaming, an aborted request
when the caller cancels or closes the stream, and the health check Serve calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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
    assert replica.info().name == "m"


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


def test_the_vllm_engine_is_not_built_yet() -> None:
    with pytest.raises(FailedPrecondition, match="later slice"):
        build_engine(ReplicaSpec(engine="vllm", model="m"))
