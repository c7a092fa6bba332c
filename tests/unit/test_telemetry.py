"""Telemetry without a span exporter: no spans are made, and every metric and status code is as with one."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.config import Settings
from bastion.observability.telemetry import Telemetry


def _requests(tel: Telemetry, code: str) -> float:
    value = tel.metrics.registry.get_sample_value("bastion_rpc_requests_total", {"method": "Generate", "code": code})
    return value or 0.0


def _calls(tel: Telemetry) -> None:
    with tel.rpc("Generate", "r-ok") as rec:
        rec.resolve("m", "sha256:" + "0" * 64)
        tel.tokens(rec, 1)
        tel.tokens(rec, 2)
    with pytest.raises(asyncio.CancelledError), tel.rpc("Generate", "r-cancel"):
        raise asyncio.CancelledError
    with pytest.raises(RuntimeError), tel.rpc("Generate", "r-error"):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), tel.rpc("Generate", "r-set") as rec:
        rec.code = grpc.StatusCode.RESOURCE_EXHAUSTED
        raise RuntimeError("refused")


@pytest.mark.parametrize("exported", [False, True], ids=["no-exporter", "exporter"])
def test_metrics_and_status_codes_do_not_depend_on_tracing(exported: bool) -> None:
    spans = InMemorySpanExporter() if exported else None
    tel = Telemetry.from_settings(Settings(), span_exporter=spans)
    try:
        assert (tel.tracer_provider is None) is not exported  # traces_exporter "none": nothing would receive a span
        _calls(tel)
        for code in ("OK", "CANCELLED", "INTERNAL", "RESOURCE_EXHAUSTED"):
            assert _requests(tel, code) == 1.0, code
        reg = tel.metrics.registry
        assert reg.get_sample_value("bastion_output_tokens_total", {"model": "m"}) == 0.0  # no completion count set
        assert reg.get_sample_value("bastion_inter_token_latency_seconds_count", {"model": "m"}) == 2.0
        assert reg.get_sample_value("bastion_time_to_first_token_seconds_count", {"model": "m"}) == 1.0
        if spans is not None:
            codes = {
                s.attributes["bastion.request_id"]: s.attributes["rpc.grpc.status_code"]
                for s in spans.get_finished_spans()
            }
            assert codes == {"r-ok": 0, "r-cancel": 1, "r-error": 13, "r-set": 8}
    finally:
        tel.shutdown()
