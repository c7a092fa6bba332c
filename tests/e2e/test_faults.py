"""Cancellation, deadlines and overload on the real engine: the engine request is aborted, not left running."""

from __future__ import annotations

import time

import grpc
import pytest
from e2e_metrics import gauge

from bastion.v1 import inference_pb2 as pb

LONG = pb.SamplingParams(max_tokens=2000, temperature=0.0)


def wait_idle(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gauge(url, "bastion_inflight_requests") == 0:
            return
        time.sleep(0.2)
    raise AssertionError("requests still in flight after cancel")


def assert_engine_not_running_leftovers(stub, model_name, url: str) -> None:
    """After a short request the engine is idle: its scheduler writes zero running and waiting as soon as it runs
    out of work (bastion.engine.vllm.figures). Had the 2000-token request not been aborted, it would still be
    running (minutes on this CPU), and the figures would never reach zero."""
    list(
        stub.Generate(
            pb.GenerateRequest(
                model=model_name, prompt="Hi", sampling=pb.SamplingParams(max_tokens=8, temperature=0.0)
            ),
            timeout=60,
        )
    )
    deadline = time.monotonic() + 10
    while (gauge(url, "bastion_engine_running_requests"), gauge(url, "bastion_engine_waiting_requests")) != (0, 0):
        assert time.monotonic() < deadline, "the engine still runs a request nobody is waiting for"
        time.sleep(0.2)


def test_client_cancel_aborts_engine_request(live_server, stub, model_name) -> None:
    call = stub.Generate(
        pb.GenerateRequest(model=model_name, prompt="Write a very long story.", sampling=LONG), timeout=300
    )
    first = next(call)
    assert first.request_id
    assert gauge(live_server.metrics_url, "bastion_inflight_requests") >= 1
    # The engine's own figures, written by its scheduler at most once a second while it works, reach the metrics.
    deadline = time.monotonic() + 10
    while not (
        gauge(live_server.metrics_url, "bastion_engine_running_requests") >= 1
        and gauge(live_server.metrics_url, "bastion_engine_kv_usage_ratio") > 0
    ):
        assert time.monotonic() < deadline, "the engine's figures never showed the running request"
        next(call)  # keep reading: a stream nobody reads stops being written
    call.cancel()
    wait_idle(live_server.metrics_url)
    assert_engine_not_running_leftovers(stub, model_name, live_server.metrics_url)


def test_deadline_aborts_engine_request(live_server, stub, model_name) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.Generate(
                pb.GenerateRequest(model=model_name, prompt="Write a very long story.", sampling=LONG), timeout=3.0
            )
        )
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    wait_idle(live_server.metrics_url)
    assert_engine_not_running_leftovers(stub, model_name, live_server.metrics_url)


def test_overload_is_resource_exhausted(live_server, stub, model_name) -> None:
    # The e2e server admits 8 requests at once (server.max_inflight_requests = 8).
    calls = [
        stub.Generate(pb.GenerateRequest(model=model_name, prompt=f"Story {i}:", sampling=LONG), timeout=300)
        for i in range(8)
    ]
    try:
        for c in calls:
            next(c)  # all eight admitted and streaming
        with pytest.raises(grpc.RpcError) as info:
            list(
                stub.Generate(
                    pb.GenerateRequest(model=model_name, prompt="one more", sampling=pb.SamplingParams(max_tokens=4)),
                    timeout=30,
                )
            )
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "overloaded" in (info.value.details() or "")
    finally:
        for c in calls:
            c.cancel()
    wait_idle(live_server.metrics_url)
    # Capacity is back once the flood is gone.
    out = list(
        stub.Generate(
            pb.GenerateRequest(model=model_name, prompt="Hi", sampling=pb.SamplingParams(max_tokens=2)), timeout=60
        )
    )
    assert out[-1].usage.completion_tokens == 2


def test_metrics_endpoint_reports_requests(live_server) -> None:
    from e2e_metrics import scrape

    vals = scrape(live_server.metrics_url)
    assert any(k.startswith("bastion_rpc_requests") and v > 0 for k, v in vals.items())
    assert any(k.startswith("bastion_output_tokens") and v > 0 for k, v in vals.items())
    assert any(k.startswith("bastion_time_to_first_token") for k in vals)
