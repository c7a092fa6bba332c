"""Startup, readiness, drain and abort on shutdown, start failures, signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import grpc
import pytest
from grpc_harness import collect, make_settings, pool_of, prompt_request, running_server
from grpc_health.v1 import health_pb2

from bastion.engine.process import EngineProcessEnv
from bastion.engine.protocol import EnginePool
from bastion.server.app import serve
from bastion.v1 import inference_pb2 as pb
from fakes import FakeEngine

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_not_serving_until_pool_ready() -> None:
    release = asyncio.Event()
    engine = FakeEngine()

    async def slow_factory(process: EngineProcessEnv) -> EnginePool:
        await release.wait()
        return EnginePool([engine])

    async with running_server(pool_factory=slow_factory, wait_ready=False) as srv:
        assert await srv.health_status("") == NOT_SERVING
        assert await srv.health_status("bastion.v1.Inference") == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Generate(prompt_request()))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await srv.stub.ListModels(pb.ListModelsRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        release.set()
        await srv.wait_health(SERVING)
        assert await srv.health_status("bastion.v1.Inference") == SERVING
        assert (await collect(srv.stub.Generate(prompt_request(max_tokens=1))))[-1].usage.completion_tokens == 1
        rc = await srv.stop()
    assert rc == 0 and engine.shutdown_called


async def test_shutdown_drains_in_flight_stream_within_grace() -> None:
    engine = FakeEngine(token_delay=0.03)
    async with running_server([engine], settings=make_settings(server={"grace_period_s": 5})) as srv:
        call = srv.stub.Generate(prompt_request(max_tokens=10))
        await call.read()
        srv.stop_event.set()
        await srv.wait_health(NOT_SERVING)
        with pytest.raises(grpc.aio.AioRpcError) as info:  # new work is refused cleanly meanwhile
            await collect(srv.stub.Generate(prompt_request(max_tokens=1)))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "server is shutting down"
        rest = await collect_rest(call)
        assert await call.code() == grpc.StatusCode.OK
        assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH and rest[-1].usage.completion_tokens == 10
        rc = await asyncio.wait_for(srv.task, 5)
    assert rc == 0 and engine.aborted == [] and engine.shutdown_called


async def test_shutdown_aborts_streams_past_grace() -> None:
    engine = FakeEngine(hang_after=2)
    async with running_server([engine], settings=make_settings(server={"grace_period_s": 0.3})) as srv:
        call = srv.stub.Generate(prompt_request(max_tokens=50))
        first = await call.read()
        loop = asyncio.get_running_loop()
        started = loop.time()
        srv.stop_event.set()
        rest = await collect_rest(call)
        assert await call.code() == grpc.StatusCode.OK
        rc = await asyncio.wait_for(srv.task, 5)
        elapsed = loop.time() - started
    final = rest[-1]
    assert final.finish_reason == pb.FINISH_REASON_ABORT
    assert final.request_id == first.request_id and final.model_digest == first.model_digest
    assert final.usage.completion_tokens == 2 and final.usage.prompt_tokens == 5
    assert engine.aborted == [first.request_id] and engine.closed == [first.request_id]
    assert rc == 0 and 0.3 - 1e-3 <= elapsed < 3  # the grace period ran (uvloop's clock counts milliseconds)


async def test_shutdown_during_tokenize_past_grace_is_unavailable() -> None:
    engine = FakeEngine(tokenize_delay=30)
    async with running_server([engine], settings=make_settings(server={"grace_period_s": 0.1})) as srv:
        call = srv.stub.Generate(prompt_request())
        await asyncio.sleep(0.1)
        srv.stop_event.set()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(call)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await asyncio.wait_for(srv.task, 5) == 0


async def collect_rest(call: grpc.aio.UnaryStreamCall) -> list[pb.GenerateResponse]:
    out = []
    while (msg := await call.read()) is not grpc.aio.EOF:
        out.append(msg)
    return out


async def test_pool_factory_failure_exits_non_zero(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(process: EngineProcessEnv) -> EnginePool:
        raise RuntimeError("CUDA out of memory\nlong\ntrace")

    with caplog.at_level(logging.INFO):
        rc = await asyncio.wait_for(serve(make_settings(), broken, stop_event=asyncio.Event()), 10)
    assert rc == 1
    (err,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert err.getMessage() == "engine pool failed to start: RuntimeError: CUDA out of memory"
    assert err.exc_info is None


async def test_stop_while_loading_cancels_the_load() -> None:
    cancelled = asyncio.Event()

    async def forever(process: EngineProcessEnv) -> EnginePool:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        raise AssertionError

    stop = asyncio.Event()
    bound = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve(make_settings(), forever, stop_event=stop, on_bound=bound.set_result))
    await asyncio.wait_for(bound, 5)
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert cancelled.is_set()


async def test_bind_failure_exits_non_zero(tmp_path) -> None:
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("x")
    rc = await serve(make_settings(listen=f"unix:{not_a_socket}"), pool_of(), stop_event=asyncio.Event())
    assert rc == 1 and not_a_socket.read_text() == "x"


async def test_sigterm_stops_the_server() -> None:
    engine = FakeEngine()
    bound = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve(make_settings(), pool_of(engine), on_bound=bound.set_result))
    await asyncio.wait_for(bound, 5)
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 5) == 0
    assert engine.shutdown_called
