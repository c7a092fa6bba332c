"""OpenTelemetry tracing: a private TracerProvider per server (the global one is left alone)."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

SERVICE_NAME = "bastion"


def build_tracer_provider(exporter: str, extra: SpanExporter | None = None) -> TracerProvider | None:
    """exporter: "none", "console" (stderr) or "otlp" (``bastion.observability.otlp``; ConfigError for a
    plaintext endpoint off loopback).

    ``extra`` is exported synchronously as well; tests pass an InMemorySpanExporter. None when nothing would
    receive a span ("none" and no ``extra``): spans are then not made at all (nothing in bastion reads the current
    span; issue 19's profile found the span's creation and attributes in every call's cost).
    """
    if exporter == "none" and extra is None:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from bastion.observability.otlp import span_exporter

        provider.add_span_processor(BatchSpanProcessor(span_exporter()))
    if extra is not None:
        provider.add_span_processor(SimpleSpanProcessor(extra))
    return provider
