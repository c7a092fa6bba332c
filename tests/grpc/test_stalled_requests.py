"""Calls that never send their request message cannot take what authenticated calls need (issue 14, part 3).

grpc.aio takes a concurrent-RPC slot when a call's headers arrive and reads a unary request before the
handler runs, so a client that opens calls and never sends the message held a slot each until it gave up,
credentials or not: 340 such calls to Generate without a key starved an authenticated Generate. Now the
gate authenticates from the headers before the message is read, public methods are capped per listener
while they wait for theirs, and every request message must arrive within ``server.request_read_timeout_s``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from grpc_harness import collect, make_settings, prompt_request, running_server

from bastion.server.interceptor import PUBLIC_WAITING_CAP
from bastion.v1 import inference_pb2 as pb
from fakes import FakeEngine

GENERATE = "/bastion.v1.Inference/Generate"
CHECK = "/grpc.health.v1.Health/Check"
FLOOD = 2 * 128 + 64 + 20  # past the main listener's concurrent-RPC limit with default settings


@asynccontextmanager
async def stalled(
    address: str, path: str, n: int, key: str | None = None, connections: int = 4
) -> AsyncIterator[Counter[str]]:
    """``n`` calls to ``path`` that send headers and never a message; yields how each ended within 3 s
    ("open": still waiting)."""
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    channels = [grpc.aio.insecure_channel(address, options=[("bastion.test.c", i)]) for i in range(connections)]
    calls = [channels[i % connections].stream_stream(path)(metadata=metadata) for i in range(n)]
    outcomes: Counter[str] = Counter()

    async def outcome(call: grpc.aio.StreamStreamCall) -> str:
        try:
            await asyncio.wait_for(call.code(), 3)
        except TimeoutError:
            return "open"
        return (await call.code()).name

    try:
        outcomes.update(await asyncio.gather(*(outcome(c) for c in calls)))
        yield outcomes
    finally:
        for c in calls:
            c.cancel()
        for ch in channels:
            await ch.close()


async def _generate_served(srv) -> None:  # type: ignore[no-untyped-def]
    msgs = await asyncio.wait_for(collect(srv.stub.Generate(prompt_request(max_tokens=3))), 10)
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH


async def test_anonymous_calls_that_never_send_a_request_are_refused_at_once() -> None:
    async with running_server([FakeEngine()]) as srv, stalled(srv.address, GENERATE, FLOOD) as outcomes:
        assert set(outcomes) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}, outcomes
        assert outcomes["UNAUTHENTICATED"] > FLOOD // 2, outcomes
        await _generate_served(srv)


async def test_public_calls_waiting_for_their_request_are_capped() -> None:
    settings = make_settings(extra={"auth": {"public_health": True}})
    async with running_server([FakeEngine()], settings=settings) as srv, stalled(srv.address, CHECK, FLOOD) as out:
        assert out["open"] <= PUBLIC_WAITING_CAP and set(out) <= {"open", "RESOURCE_EXHAUSTED"}, out
        await _generate_served(srv)


async def test_an_authenticated_call_must_send_its_request_in_time() -> None:
    settings = make_settings(server={"request_read_timeout_s": 0.5})
    async with running_server([FakeEngine()], settings=settings) as srv:
        key = srv.identity.keys["alice"]
        async with stalled(srv.address, GENERATE, 3, key=key, connections=1) as outcomes:
            assert outcomes == Counter({"INVALID_ARGUMENT": 3}), outcomes
        await _generate_served(srv)
