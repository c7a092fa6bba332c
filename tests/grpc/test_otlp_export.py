"""OTLP export (issue 18, item 2) to a receiver nobody on the project wrote: rotel, a Rust OpenTelemetry
collector (PyPI ``rotel``, hash-locked in requirements/clients.lock), printing what it receives. The server's
spans, metrics and audit records arrive, configured only by the standard ``OTEL_EXPORTER_OTLP_*`` variables,
over gRPC and over HTTP; a plaintext endpoint off loopback is refused before anything is sent."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import rotel
from grpc_harness import collect, make_settings, prompt_request, running_server

from bastion.errors import ConfigError
from bastion.observability.otlp import check_transport
from fakes import FakeEngine

AGENT = Path(rotel.__file__).parent / "rotel-agent"
OTLP = {"traces_exporter": "otlp", "metrics_exporter": "otlp", "audit_logs_exporter": "otlp"}


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


@contextmanager
def _rotel(out: Path) -> Iterator[tuple[int, int]]:
    grpc_port, http_port = _ports(2)
    args = [str(AGENT), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}"]
    args += ["--otlp-http-endpoint", f"127.0.0.1:{http_port}", "--exporter", "blackhole"]
    args += ["--debug-log", "traces", "--debug-log", "metrics", "--debug-log", "logs"]
    args += ["--debug-log-verbosity", "detailed"]
    with out.open("wb") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", grpc_port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()[-2000:]
            time.sleep(0.1)
        yield grpc_port, http_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_spans_metrics_and_audit_records_reach_an_otlp_collector(
    protocol: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "rotel.out"
    with _rotel(out) as (grpc_port, http_port):
        port = grpc_port if protocol == "grpc" else http_port
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
        settings = make_settings(extra={"observability": OTLP})
        async with running_server([FakeEngine()], settings=settings) as srv:
            await collect(srv.stub.Generate(prompt_request(max_tokens=2)))
            await asyncio.sleep(0.8)  # a metrics push or two
        # Leaving the server shut its telemetry down, which flushes the span and audit batches.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = out.read_text(errors="replace")
            wanted = ("bastion.v1.Inference/Generate", "bastion_rpc_requests", "bastion_inter_token", "bastion.audit")
            if all(s in text for s in wanted):
                break
            await asyncio.sleep(0.2)
    text = out.read_text(errors="replace")
    assert "bastion.v1.Inference/Generate" in text, text[-3000:]  # the span
    assert "bastion_rpc_requests" in text, text[-3000:]  # a metric
    # The inter-token histogram goes through OpenTelemetry when the push is on (bastion.observability.token_gaps).
    assert "bastion_inter_token_latency" in text, text[-3000:]
    assert "bastion.audit.request" in text and "audit.request_id" in text, text[-3000:]  # an audit record


def test_a_plaintext_endpoint_off_loopback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_INSECURE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector.example:4317")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: collector.example is not a loopback"):
        check_transport("traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://collector.example:4317")
    check_transport("traces")  # TLS: fine
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector.example:4317")
    with pytest.raises(ConfigError, match="plaintext"):
        check_transport("traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL must be one of grpc, http/protobuf"):
        check_transport("metrics")
    # A server configured so does not start (one line, exit 1), it never sends.
    settings = make_settings(extra={"observability": {"traces_exporter": "otlp"}})
    from bastion.observability.telemetry import Telemetry

    with pytest.raises(ConfigError):
        Telemetry.from_settings(settings)
