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


def build_tracer_provider(exporter: str, extra: SpanExporter | None = None) -> TracerProvider:
    """exporter: "none" (spans are created for context but not exported), "console" (stderr) or "otlp"
    (``bastion.observability.otlp``; ConfigError for a plaintext endpoint off loopback).

    ``extra`` is exported synchronously as well; tests pass an InMemorySpanExporter.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from bastion.observability.otlp import span_exporter

        provider.add_span_processor(BatchSpanProcessor(span_exporter()))
    if extra is not None:
        provider.add_span_processor(SimpleSpanProcessor(extra))
    return provider
