"""Every refusal and failure maps to the right status with a safe message."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from grpc_harness import collect, make_settings, prompt_request, running_server
from grpc_health.v1 import health_pb2

from bastion import errors
from bastion.observability.logs import RequestIdFilter
from bastion.v1 import inference_pb2 as pb
from fakes import FakeEngine

SECRET = "zq7secretvalue"


def _conv(*msgs: tuple[int, str]) -> pb.Conversation:
    return pb.Conversation(messages=[pb.ChatMessage(role=r, content=c) for r, c in msgs])


BAD_REQUESTS = [
    (pb.GenerateRequest(prompt=SECRET), "model: is required"),
    (pb.GenerateRequest(model=SECRET * 10, prompt="x"), "model: must be at most 128 bytes"),
    (pb.GenerateRequest(model="fake-model"), "input: one of prompt or conversation is required"),
    (pb.GenerateRequest(model="fake-model", prompt=""), "prompt: must be between 1 and 131072 bytes"),
    (pb.GenerateRequest(model="fake-model", prompt=SECRET + "x" * 131072), "prompt: must be between 1 and 131072"),
    (pb.GenerateRequest(model="fake-model", conversation=pb.Conversation()), "conversation.messages: must hold"),
    (pb.GenerateRequest(model="fake-model", conversation=_conv((0, SECRET))), "conversation.messages[0].role:"),
    (
        pb.GenerateRequest(model="fake-model", conversation=_conv((2, SECRET * 3000))),
        "conversation.messages[0].content: must be at most 32768 bytes",
    ),
    (
        pb.GenerateRequest(model="fake-model", prompt="x", sampling=pb.SamplingParams(max_tokens=0)),
        "sampling.max_tokens: must be between 1 and 4096",
    ),
    (
        pb.GenerateRequest(model="fake-model", prompt="x", sampling=pb.SamplingParams(temperature=math.nan)),
        "sampling.temperature: must be between 0 and 2",
    ),
    (pb.GenerateRequest(model="fake-model", prompt="x", sampling=pb.SamplingParams(top_p=0)), "sampling.top_p:"),
    (pb.GenerateRequest(model="fake-model", prompt="x", sampling=pb.SamplingParams(top_k=5000)), "sampling.top_k:"),
    (
        pb.GenerateRequest(model="fake-model", prompt="x", sampling=pb.SamplingParams(seed=2**64 - 1)),
        "sampling.seed: must be at most 2^63-1",
    ),
    (
        pb.GenerateRequest(model="fake-model", prompt="x", sampling=pb.SamplingParams(stop=[SECRET * 20])),
        "sampling.stop[0]: must be between 1 and 128 bytes",
    ),
    (
        pb.GenerateRequest(model="fake-model", prompt="x", sampling=pb.SamplingParams(logprobs=99)),
        "sampling.logprobs: must be between 0 and 20",
    ),
    (pb.GenerateRequest(model="fake-model", prompt="x", client_request_id=SECRET + " !"), "client_request_id:"),
]


async def test_bad_inputs_are_invalid_argument_naming_field_and_limit() -> None:
    engine = FakeEngine()
    settings = make_settings(server={"max_receive_message_bytes": 4 << 20})
    async with running_server([engine], settings=settings) as srv:
        for request, expected in BAD_REQUESTS:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await collect(srv.stub.Generate(request))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
            assert info.value.details().startswith(expected)
            assert SECRET not in info.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await srv.stub.Tokenize(pb.TokenizeRequest(model="fake-model", prompt=""))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert engine.requests == []


async def test_unknown_model_is_not_found() -> None:
    async with running_server([FakeEngine()]) as srv:
        for call in (srv.stub.Generate(prompt_request(model="nope")),):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await collect(call)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert info.value.details() == "model not found"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await srv.stub.Tokenize(pb.TokenizeRequest(model="nope", prompt="x"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_prompt_longer_than_context() -> None:
    engine = FakeEngine(max_context=16)
    async with running_server([engine]) as srv:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Generate(prompt_request("x" * 16)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "prompt: must be shorter than the model context of 16 tokens"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Generate(prompt_request("x" * 10, max_tokens=7)))
        assert info.value.details().startswith("sampling.max_tokens: prompt tokens plus max_tokens")
        assert "16 tokens" in info.value.details()
    assert engine.requests == []


async def test_overload_is_resource_exhausted() -> None:
    engine = FakeEngine(hang_after=1)
    settings = make_settings(server={"max_inflight_requests": 2, "tenant_admission_share": 1.0})  # the global bound
    async with running_server([engine], settings=settings) as srv:
        calls = [srv.stub.Generate(prompt_request(max_tokens=5)) for _ in range(2)]
        for c in calls:
            await c.read()  # both admitted and streaming
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Generate(prompt_request(max_tokens=5)))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for c in calls:
            c.cancel()
        await asyncio.sleep(0.1)
        # Capacity is back once the cancelled ones are released.
        engine.hang_after = None
        msgs = await collect(srv.stub.Generate(prompt_request(max_tokens=1)))
        assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH


async def _until(predicate, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


async def test_client_cancel_aborts_engine_request() -> None:
    engine = FakeEngine(hang_after=2)
    async with running_server([engine]) as srv:
        call = srv.stub.Generate(prompt_request(max_tokens=50))
        first = await call.read()
        call.cancel()
        await _until(lambda: first.request_id in engine.aborted and first.request_id in engine.closed)
    span = next(s for s in srv.spans.get_finished_spans() if s.name.endswith("Generate"))
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_deadline_aborts_engine_request() -> None:
    engine = FakeEngine(hang_after=1)
    async with running_server([engine]) as srv:
        call = srv.stub.Generate(prompt_request(max_tokens=50), timeout=0.3)
        first = await call.read()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await _until(lambda: first.request_id in engine.aborted and first.request_id in engine.closed)


async def test_engine_not_ready_is_unavailable() -> None:
    engine = FakeEngine(ready=False)
    async with running_server([engine], wait_ready=False) as srv:
        await asyncio.sleep(0.1)
        assert await srv.health_status() == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Generate(prompt_request()))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        engine.set_ready()
        await srv.wait_health(health_pb2.HealthCheckResponse.SERVING)


async def test_engine_death_unavailable_and_not_serving() -> None:
    engine = FakeEngine(die_after=2)
    async with running_server([engine]) as srv:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Generate(prompt_request(max_tokens=10)))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "model engine is unavailable"
        await srv.wait_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await srv.wait_health(health_pb2.HealthCheckResponse.NOT_SERVING, service="bastion.v1.Inference")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Generate(prompt_request()))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("where", ["generate", "tokenize"])
async def test_internal_error_reveals_only_the_request_id(where: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(fail_after=1) if where == "generate" else FakeEngine(tokenize_error=ValueError(SECRET))
    engine.fail_with = RuntimeError(SECRET)
    caplog.handler.addFilter(RequestIdFilter())
    async with running_server([engine]) as srv:
        call = srv.stub.Generate(prompt_request(max_tokens=5))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(call)
        rid = dict(await call.initial_metadata())["x-request-id"]
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == f"internal error (request_id={rid})"
    assert dict(info.value.trailing_metadata())["x-request-id"] == rid
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors and all(SECRET not in r.getMessage() for r in errors)
    assert any(getattr(r, "request_id", None) == rid for r in errors)


PATH_DETAIL = f"/srv/bastion/models/{SECRET}/weights-00003.ctxd segment 7: tag mismatch"


@pytest.mark.parametrize(
    ("exc", "code", "details"),
    [
        (errors.NotFound(PATH_DETAIL), grpc.StatusCode.NOT_FOUND, "not found"),
        (errors.Unavailable(PATH_DETAIL), grpc.StatusCode.UNAVAILABLE, "service unavailable"),
        (errors.PermissionDenied(PATH_DETAIL), grpc.StatusCode.PERMISSION_DENIED, "permission denied"),
        (errors.FailedPrecondition(PATH_DETAIL), grpc.StatusCode.FAILED_PRECONDITION, "failed precondition"),
        (errors.RateLimited(1.0, detail=PATH_DETAIL), grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded"),
        (errors.IntegrityError(PATH_DETAIL), grpc.StatusCode.INTERNAL, "internal error (request_id="),
        (errors.NativeIOError(PATH_DETAIL), grpc.StatusCode.INTERNAL, "internal error (request_id="),
    ],
)
async def test_a_detail_with_a_path_never_reaches_the_client(
    exc: errors.BastionError, code: grpc.StatusCode, details: str
) -> None:
    async with running_server([FakeEngine(tokenize_error=exc)]) as srv:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Generate(prompt_request(max_tokens=5)))
    assert info.value.code() == code
    assert info.value.details().startswith(details)
    for text in (info.value.details(), *(str(v) for _, v in info.value.trailing_metadata())):
        assert SECRET not in text and "/srv/" not in text and "segment 7" not in text
