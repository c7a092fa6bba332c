"""Tenant limits come before the expensive work (issue 15, item 7).

Generate took the global admission slot and ran the tokenizer before the tenant's request, stream and token
limits, so a tenant over its rate still consumed admission slots, tokenizer work and audit writes, one
tenant could hold every admission slot, and a client that stopped reading held its slot forever. Now the
tenant is charged first (its prompt on an upper bound, corrected after tokenizing), holds at most its
share of admission, and a stream whose client stops reading is aborted after
``server.stream_write_timeout_s``. The assertions count calls, slots and records, not time.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_harness import collect, make_settings, prompt_request, running_server

from bastion.engine.protocol import ChatTurn, EngineOutput, EngineRequest
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FakeEngine
from identity import make_identity


class CountingEngine(FakeEngine):
    """Counts tokenize calls by the prompt's first character (each test gives each tenant its own)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.tokenized: Counter[str] = Counter()

    async def tokenize(
        self, prompt: str | None, conversation: Sequence[ChatTurn] | None, *, raw_special_tokens: bool = False
    ) -> list[int]:
        self.tokenized[(prompt or "?")[:1]] += 1
        return await super().tokenize(prompt, conversation, raw_special_tokens=raw_special_tokens)


class BulkyEngine(FakeEngine):
    """Streams 64 KiB of text per token, so a client that stops reading blocks the server's writes soon."""

    TEXT = "x" * (64 << 10)

    async def _generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        n = request.sampling.max_tokens
        try:
            for i in range(n):
                yield EngineOutput(
                    text=self.TEXT,
                    token_ids=(1000 + i,),
                    finished=i + 1 == n,
                    finish_reason="length" if i + 1 == n else None,
                    prompt_tokens=len(request.prompt_token_ids),
                    completion_tokens=i + 1,
                )
                await asyncio.sleep(0)
        finally:
            self.closed.append(request.request_id)


def _records(audit_dir: Path, request_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for seg in sorted(audit_dir.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line]
    return [r for r in out if r.get("request_id") == request_id]


async def _code(call: Any) -> grpc.StatusCode:
    """How the call ended (an admitted call on a hanging engine would not: TimeoutError after 20 s)."""
    try:
        await asyncio.wait_for(collect(call), 20)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_a_tenant_over_its_rate_never_reaches_the_tokenizer_and_others_are_admitted(tmp_path: Path) -> None:
    burst = 5
    ident = make_identity(tmp_path / "id", tenants={"tenant-b": {"requests_per_s": 0.001, "request_burst": burst}})
    settings = make_settings(identity=ident)  # 128 admitted; 320 concurrent RPCs, so gRPC itself refuses none
    engine = CountingEngine(max_context=1 << 16, tokenize_delay=0.05)
    async with running_server([engine], settings=settings) as srv:
        bob = pb_grpc.InferenceStub(srv.channel_for("bob"))
        oversized = "B" * 16000  # far more tokens than the tenant may ever run: refused before tokenizing
        flood = [bob.Generate(prompt_request(oversized, max_tokens=3)) for _ in range(200)]
        others = [srv.stub.Generate(prompt_request("A" * 100, max_tokens=3)) for _ in range(20)]
        codes = await asyncio.gather(*(_code(c) for c in flood + others))
        bob_codes, alice_codes = Counter(codes[:200]), Counter(codes[200:])
        assert alice_codes == Counter({grpc.StatusCode.OK: 20}), alice_codes
        assert bob_codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= 200 - burst, bob_codes
        assert engine.tokenized["B"] <= burst, engine.tokenized  # refused calls never reached the tokenizer
        assert engine.tokenized["A"] >= 20  # every one of alice's calls was tokenized


async def test_a_tenant_over_its_stream_limit_is_refused_before_tokenizing(tmp_path: Path) -> None:
    ident = make_identity(tmp_path / "id", tenants={"tenant-a": {"max_concurrent_streams": 1}})
    engine = CountingEngine(max_context=1 << 16, hang_after=1)
    async with running_server([engine], settings=make_settings(identity=ident)) as srv:
        held = srv.stub.Generate(prompt_request("held", max_tokens=5))
        await held.read()  # admitted and streaming
        more = [srv.stub.Generate(prompt_request("X" * 1000, max_tokens=3)) for _ in range(30)]
        codes = Counter(await asyncio.gather(*(_code(c) for c in more)))
        assert codes == Counter({grpc.StatusCode.RESOURCE_EXHAUSTED: 30}), codes
        assert engine.tokenized["X"] == 0, engine.tokenized
        held.cancel()


async def test_one_tenant_holds_at_most_its_share_of_admission() -> None:
    settings = make_settings(server={"max_inflight_requests": 4})  # default share 0.5: two per tenant
    engine = FakeEngine(max_context=1 << 16, hang_after=1)
    async with running_server([engine], settings=settings) as srv:
        bob = pb_grpc.InferenceStub(srv.channel_for("bob"))
        calls = [srv.stub.Generate(prompt_request(max_tokens=5)) for _ in range(2)]
        for c in calls:
            await c.read()  # alice's two are admitted and streaming
        assert await _code(srv.stub.Generate(prompt_request(max_tokens=5))) == grpc.StatusCode.RESOURCE_EXHAUSTED
        theirs = [bob.Generate(prompt_request(max_tokens=5)) for _ in range(2)]
        for c in theirs:
            msg = await c.read()  # another tenant still gets the rest of the server
            assert isinstance(msg, pb.GenerateResponse), msg
        for c in calls + theirs:
            c.cancel()


async def test_a_share_of_one_lets_a_tenant_take_every_slot() -> None:
    settings = make_settings(server={"max_inflight_requests": 3, "tenant_admission_share": 1.0})
    engine = FakeEngine(max_context=1 << 16, hang_after=1)
    async with running_server([engine], settings=settings) as srv:
        calls = [srv.stub.Generate(prompt_request(max_tokens=5)) for _ in range(3)]
        for c in calls:
            assert isinstance(await c.read(), pb.GenerateResponse)
        assert await _code(srv.stub.Generate(prompt_request(max_tokens=5))) == grpc.StatusCode.RESOURCE_EXHAUSTED
        for c in calls:
            c.cancel()


async def test_a_stream_whose_client_stops_reading_is_aborted_and_its_slots_freed(tmp_path: Path) -> None:
    ident = make_identity(tmp_path / "id", tenants={"tenant-a": {"max_concurrent_streams": 1}})
    settings = make_settings(
        identity=ident,
        server={"max_inflight_requests": 1, "tenant_admission_share": 1.0, "stream_write_timeout_s": 0.5},
    )
    engine = BulkyEngine(max_context=1 << 16)
    async with running_server([engine], settings=settings) as srv:
        stalled = pb_grpc.InferenceStub(srv.channel_for("alice")).Generate(prompt_request(max_tokens=4000))
        try:
            await stalled.read()  # one message, then this client reads no more
            rid = dict(await stalled.initial_metadata())["x-request-id"]
            for _ in range(400):  # up to 20 s; the write timeout is 0.5 s
                if rid in engine.closed:
                    break
                await asyncio.sleep(0.05)
            assert rid in engine.aborted, "the stalled stream was never aborted"
            assert engine.closed == [rid], engine.closed
            # Its admission slot (the only one) and the tenant's only stream slot are free again.
            msgs = await asyncio.wait_for(collect(srv.stub.Generate(prompt_request(max_tokens=2))), 20)
            assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
            records = [r for r in _records(srv.audit_dir, rid) if r.get("status")]
            assert [r["status"] for r in records] == ["UNAVAILABLE"], records
        finally:
            stalled.cancel()
