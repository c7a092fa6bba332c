"""Spans per RPC, the Prometheus endpoint, and request ids in logs (never prompt text)."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_harness import collect, make_settings, prompt_request, running_server

from bastion.observability.logs import RequestIdFilter
from bastion.observability.telemetry import UNRESOLVED_MODEL
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FAKE_DIGEST, FakeEngine
from identity import make_identity

PROMPT = "a very private prompt"


async def test_spans_carry_rpc_model_usage_and_status() -> None:
    async with running_server([FakeEngine()]) as srv:
        call = srv.stub.Generate(prompt_request(PROMPT, max_tokens=3))
        msgs = await collect(call)
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(srv.stub.Generate(prompt_request(model="missing")))
        await srv.stub.Tokenize(pb.TokenizeRequest(model="fake-model", prompt="x"))
    spans = {s.attributes["bastion.request_id"]: s for s in srv.spans.get_finished_spans()}
    ok = spans[msgs[0].request_id]
    assert ok.name == "bastion.v1.Inference/Generate"
    a = ok.attributes
    assert a["rpc.method"] == "Generate" and a["rpc.service"] == "bastion.v1.Inference"
    assert a["rpc.grpc.status_code"] == 0
    assert a["bastion.model"] == "fake-model" and a["bastion.model_digest"] == FAKE_DIGEST
    assert a["bastion.usage.prompt_tokens"] == len(PROMPT) and a["bastion.usage.completion_tokens"] == 3
    assert a["bastion.usage.cached_prompt_tokens"] == len(PROMPT) // 2
    assert a["bastion.ttft_s"] >= 0
    assert all(PROMPT not in str(v) for s in spans.values() for v in s.attributes.values())
    codes = sorted((s.attributes["rpc.method"], s.attributes["rpc.grpc.status_code"]) for s in spans.values())
    assert codes == [("Generate", 0), ("Generate", grpc.StatusCode.NOT_FOUND.value[0]), ("Tokenize", 0)]


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        return r.read().decode()


async def test_metrics_endpoint_serves_counters() -> None:
    settings = make_settings(metrics_listen="127.0.0.1:0")
    async with running_server([FakeEngine(token_delay=0.001)], settings=settings) as srv:
        await collect(srv.stub.Generate(prompt_request(max_tokens=4)))
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(srv.stub.Generate(prompt_request(model="")))
        address = srv.telemetry.metrics.http_address
        text = await asyncio.to_thread(_scrape, address)
    lines = text.splitlines()

    def value(prefix: str) -> float:
        (line,) = [ln for ln in lines if ln.startswith(prefix)]
        return float(line.rsplit(" ", 1)[1])

    assert value('bastion_rpc_requests_total{code="OK",method="Generate"}') == 1
    assert value('bastion_rpc_requests_total{code="INVALID_ARGUMENT",method="Generate"}') == 1
    assert value('bastion_rpc_errors_total{code="INVALID_ARGUMENT",method="Generate"}') == 1
    assert value('bastion_output_tokens_total{model="fake-model"}') == 4
    # Per tenant: prompt and cached prompt tokens (the tenant's prefix hit rate is their ratio).
    assert value('bastion_prompt_tokens_total{model="fake-model",tenant="tenant-a"}') == len("hello")
    assert value('bastion_cached_prompt_tokens_total{model="fake-model",tenant="tenant-a"}') == len("hello") // 2
    assert value('bastion_time_to_first_token_seconds_count{model="fake-model"}') == 1
    assert value('bastion_inter_token_latency_seconds_count{model="fake-model"}') == 3
    assert value('bastion_request_output_tokens_per_second_count{model="fake-model"}') == 1
    assert value('bastion_engine_waiting_requests{model="fake-model"}') == 2
    assert value('bastion_engine_kv_usage_ratio{model="fake-model"}') == 0.25
    assert value("bastion_inflight_requests") == 0
    assert "process_cpu_seconds_total" in text
    # The endpoint is gone after shutdown.
    with pytest.raises(OSError):
        await asyncio.to_thread(_scrape, address)


async def test_client_model_names_never_become_metric_labels(tmp_path: Path) -> None:
    """Red-team finding: the model string a client sent became a Prometheus label before it was authorized or
    resolved, so 50 made-up names made 50 new series. Unknown names (alice: NOT_FOUND) and names the policy
    refuses (bob: PERMISSION_DENIED) now leave the labels as they were."""
    ident = make_identity(tmp_path / "id", tenants={"tenant-b": {"models": ["fake-model"]}})
    settings = make_settings(metrics_listen="127.0.0.1:0", identity=ident)
    names = [f"probe-{secrets.token_hex(6)}" for _ in range(50)]
    async with running_server([FakeEngine()], settings=settings) as srv:
        await collect(srv.stub.Generate(prompt_request(max_tokens=2)))
        bob = pb_grpc.InferenceStub(srv.channel_for("bob"))
        codes = set()
        for i, name in enumerate(names):
            stub = bob if i % 2 else srv.stub
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub.Generate(prompt_request(model=name, max_tokens=2)))
            codes.add(err.value.code())
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Tokenize(pb.TokenizeRequest(model=name, prompt="x"))
        text = await asyncio.to_thread(_scrape, srv.telemetry.metrics.http_address)
    assert codes == {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED}
    labels = set(re.findall(r'model="([^"]*)"', text))
    assert labels <= {"fake-model", UNRESOLVED_MODEL}, sorted(labels)[:5]
    assert not any(name in text for name in names)
    assert 'bastion_rpc_requests_total{code="NOT_FOUND",method="Generate"} 25.0' in text


async def test_logs_carry_request_id_never_prompt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.DEBUG, logger="bastion"):
        async with running_server([FakeEngine()]) as srv:
            msgs = await collect(srv.stub.Generate(prompt_request(PROMPT, max_tokens=2)))
    rid = msgs[0].request_id
    done = [r for r in caplog.records if r.getMessage().startswith("generate done")]
    assert done and done[0].request_id == rid and done[0].levelname == "INFO"
    # "w0 " is the fake completion's first token (with its space: a temp path may contain "w0").
    assert all(PROMPT not in r.getMessage() and "w0 " not in r.getMessage() for r in caplog.records)


async def test_refusals_are_counted_by_code_and_reason(tmp_path: Path) -> None:
    """Refused calls appear in the metrics (issue 18): each call once, also those the audit log coalesced into
    one record, with labels from closed sets only (never a principal, a key or a path)."""
    ident = make_identity(tmp_path / "id", tenants={"tenant-b": {"models": ["other"]}})
    settings = make_settings(metrics_listen="127.0.0.1:0", identity=ident)
    async with running_server([FakeEngine()], settings=settings) as srv:
        anonymous = pb_grpc.InferenceStub(srv.channel_for(None))
        bob = pb_grpc.InferenceStub(srv.channel_for("bob"))
        for _ in range(3):  # coalesced after the first (same peer, one window)
            with pytest.raises(grpc.aio.AioRpcError):
                await collect(anonymous.Generate(prompt_request(max_tokens=1)))
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(bob.Generate(prompt_request(max_tokens=1)))
        forged = grpc.aio.insecure_channel(srv.address, interceptors=None)
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(
                pb_grpc.InferenceStub(forged).Generate(
                    prompt_request(max_tokens=1), metadata=(("authorization", "Bearer bst_forged"),)
                )
            )
        await forged.close()
        text = await asyncio.to_thread(_scrape, srv.telemetry.metrics.http_address)
    series = {
        ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
        for ln in text.splitlines()
        if ln.startswith("bastion_auth_refusals_total")
    }
    assert series == {
        'bastion_auth_refusals_total{code="UNAUTHENTICATED",reason="authentication_failed"}': 4,
        'bastion_auth_refusals_total{code="PERMISSION_DENIED",reason="authorization_denied"}': 1,
    }


async def test_metrics_listener_off_loopback_needs_tls_and_may_require_client_certificates(tmp_path: Path) -> None:
    """Issue 18: a scraper on another host. Any address with ``observability.metrics_tls`` (plain HTTP gets
    nothing); with its client CA, a scraper without a certificate that CA signed gets nothing either."""
    import ssl

    from certs import make_pki

    from bastion.config import load_settings
    from bastion.errors import ConfigError

    with pytest.raises(ConfigError, match=r"metrics_tls"):
        load_settings(overrides={"observability": {"metrics_listen": "0.0.0.0:9464"}})
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]), "client_ca_file": str(pki["ca"])}
    settings = make_settings(extra={"observability": {"metrics_listen": "0.0.0.0:0", "metrics_tls": tls}})
    async with running_server([FakeEngine()], settings=settings) as srv:
        port = srv.telemetry.metrics.http_address.rsplit(":", 1)[1]

        def scrape(scheme: str, cert: bool) -> str:
            ctx = ssl.create_default_context(cafile=str(pki["ca"]))
            if cert:
                ctx.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/metrics", timeout=5, context=ctx) as r:
                    return str(r.status)
            except OSError as exc:
                return type(exc).__name__

        results = {
            (s, c): await asyncio.to_thread(scrape, s, c)
            for s, c in (("https", True), ("https", False), ("http", False))
        }
    assert results[("https", True)] == "200"
    assert results[("https", False)] != "200" and results[("http", False)] != "200", results


async def test_a_callers_w3c_traceparent_parents_the_span() -> None:
    """Issue 18: W3C trace context from the call's metadata (gRPC) — the span joins the caller's trace; a
    malformed traceparent is ignored (a trace of its own), never an error."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with running_server([FakeEngine()]) as srv:
        good = ("traceparent", f"00-{trace_id}-{parent_id}-01")
        await collect(srv.stub.Generate(prompt_request(max_tokens=1), metadata=(good,)))
        await collect(srv.stub.Generate(prompt_request(max_tokens=1), metadata=(("traceparent", "00-zz-bad-01"),)))
    joined, alone = sorted(srv.spans.get_finished_spans(), key=lambda s: s.start_time)[-2:]
    assert f"{joined.context.trace_id:032x}" == trace_id and f"{joined.parent.span_id:016x}" == parent_id
    assert f"{alone.context.trace_id:032x}" != trace_id and alone.parent is None
