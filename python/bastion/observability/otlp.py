"""OTLP export of spans, metrics and audit records (``observability.traces_exporter``, ``metrics_exporter``,
``audit_logs_exporter`` = ``"otlp"``), configured the standard way: the OpenTelemetry exporters read the
``OTEL_EXPORTER_OTLP_*`` variables themselves (endpoint, headers, certificate, client key and certificate,
timeout, compression, per signal or for all), and ``OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL`` picks gRPC (default)
or ``http/protobuf`` here. ``OTEL_METRIC_EXPORT_INTERVAL`` sets the metrics push period (milliseconds).

One rule on top, as for every listener of the server: telemetry leaves this machine only over TLS. An endpoint
whose host is not loopback is refused at start when it is plaintext (``http://``, or
``OTEL_EXPORTER_OTLP_[SIGNAL_]INSECURE=true``): spans and audit records name tenants, principals and models.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from bastion.errors import ConfigError
from bastion.urls import is_loopback_host

PROTOCOLS = ("grpc", "http/protobuf")
_DEFAULT_ENDPOINT = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318"}
_SIGNALS = ("traces", "metrics", "logs")


def _env(signal: str, name: str) -> tuple[str, str | None]:
    """(the variable that is set, its value): the signal's own, else the general one."""
    for key in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = os.environ.get(key)
        if value:
            return key, value.strip()
    return f"OTEL_EXPORTER_OTLP_{name}", None


def protocol(signal: str) -> str:
    key, value = _env(signal, "PROTOCOL")
    value = value or "grpc"
    if value not in PROTOCOLS:
        raise ConfigError(f"{key} must be one of {', '.join(PROTOCOLS)} (http/json is not supported)")
    return value


def check_transport(signal: str) -> None:
    """ConfigError unless the ``signal``'s endpoint is loopback or TLS."""
    assert signal in _SIGNALS
    key, endpoint = _env(signal, "ENDPOINT")
    endpoint = endpoint or _DEFAULT_ENDPOINT[protocol(signal)]
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    try:
        host = parts.hostname or ""
    except ValueError:
        host = ""
    if not host:
        raise ConfigError(f"{key}: not a valid endpoint URL")
    _, insecure = _env(signal, "INSECURE")
    plaintext = parts.scheme == "http" or (insecure or "").lower() == "true"
    if plaintext and not is_loopback_host(host):
        raise ConfigError(
            f"{key}: {host} is not a loopback host and the endpoint is plaintext; use https:// (TLS, "
            "OTEL_EXPORTER_OTLP_CERTIFICATE for a private CA): spans and audit records name tenants and principals"
        )


def span_exporter() -> Any:
    check_transport("traces")
    if protocol("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return OTLPSpanExporter()


def metric_reader() -> Any:
    """A periodic OTLP push (every ``OTEL_METRIC_EXPORT_INTERVAL`` ms, default 60 s), beside the scrape endpoint."""
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    check_transport("metrics")
    if protocol("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
    return PeriodicExportingMetricReader(OTLPMetricExporter())


def log_exporter() -> Any:
    check_transport("logs")
    if protocol("logs") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # type: ignore[assignment]
    return OTLPLogExporter()
