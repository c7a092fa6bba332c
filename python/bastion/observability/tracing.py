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
    """exporter: "none" (spans are created for context but not exported) or "console" (stderr).

    ``extra`` is exported synchronously as well; tests pass an InMemorySpanExporter.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    if extra is not None:
        provider.add_span_processor(SimpleSpanProcessor(extra))
    return provider
