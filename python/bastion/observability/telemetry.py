"""Per-RPC telemetry: one span and one set of metric updates for each Inference RPC.

The servicer opens :meth:`Telemetry.rpc` around a call and fills the :class:`RpcRecord` (model,
digest, status code, token counts, first-token time); on exit the record becomes span attributes and
metric points. Span attributes carry ids (request, tenant, principal), counts and timings, never prompt or
completion text and never a credential.

Metric labels are bounded: ``model`` is a served model's name, set by :meth:`RpcRecord.resolve` once the
tenant's policy allowed the model and the pool found its engine; before that (an unknown or refused name)
it is ``"-"`` and no per-model series is touched. A name a client made up never becomes a label (each one
would start new series: unbounded cardinality on the scrape endpoint, and a record of probed names).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import grpc
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bastion.config import Settings
from bastion.observability.metrics import Metrics
from bastion.observability.tracing import build_tracer_provider

SERVICE = "bastion.v1.Inference"
# The model label of an RPC whose model was not resolved (unknown, not allowed, or never named).
UNRESOLVED_MODEL = "-"


_TRACE_CONTEXT = TraceContextTextMapPropagator()
_TRACE_KEYS = frozenset({"traceparent", "tracestate"})


def trace_parent(metadata: Iterable[tuple[str, Any]]) -> Context | None:
    """The W3C trace context a caller sent (``traceparent``/``tracestate`` metadata or headers), or None."""
    carrier = {k: v for k, v in metadata if k in _TRACE_KEYS and isinstance(v, str) and len(v) <= 512}
    return _TRACE_CONTEXT.extract(carrier) if carrier else None


class RpcRecord:
    """What one RPC did; filled by the servicer, read once when the RPC ends."""

    def __init__(self, method: str, request_id: str, tenant: str = "", principal: str = "") -> None:
        self.method = method
        self.request_id = request_id
        self.tenant = tenant
        self.principal = principal
        # Set once this RPC's audit record was appended (exactly one per RPC).
        self.audited = False
        # Completion text as streamed, for its keyed HMAC in the audit record (never logged).
        self.completion_parts: list[str] = []
        self.start = time.perf_counter()
        # The model as the client named it (audit records, spans), then the served name once resolved.
        self.model = ""
        self.digest = ""
        self.served_model = ""
        # The LoRA adapter the call ran with, and its digest ("": the base model).
        self.adapter = ""
        self.adapter_digest = ""
        self.client_request_id = ""
        self.code = grpc.StatusCode.OK
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.replica = ""  # the Serve replica that ran it (bastion.cluster); "" in one process
        self.ttft_s: float | None = None
        self.last_token_at: float | None = None

    def resolve(self, name: str, digest: str) -> None:
        """The served model this RPC runs on: called once the policy allowed it and its engine was found."""
        self.model, self.digest, self.served_model = name, digest, name

    @property
    def metric_model(self) -> str:
        """The ``model`` metric label: the served name once resolved, else ``UNRESOLVED_MODEL``."""
        return self.served_model or UNRESOLVED_MODEL


class Telemetry:
    def __init__(
        self, tracer_provider: TracerProvider | None, metrics: Metrics | None = None, audit_sink: Any = None
    ) -> None:
        """``tracer_provider`` None: no spans (no exporter configured); metrics and audit export as usual."""
        self.tracer_provider = tracer_provider
        self.tracer = tracer_provider.get_tracer("bastion.server") if tracer_provider is not None else None
        self.metrics = metrics or Metrics()
        # Audit records as OpenTelemetry log records (bastion.audit.export.OtelAuditExporter), or None.
        self.audit_sink = audit_sink

    @classmethod
    def from_settings(
        cls, settings: Settings, span_exporter: SpanExporter | None = None, log_exporter: Any = None
    ) -> Telemetry:
        """``log_exporter`` (an OpenTelemetry LogRecordExporter) receives the audit records too; tests
        pass an in-memory one."""
        obs = settings.observability
        provider = build_tracer_provider(obs.traces_exporter, span_exporter)
        sink = None
        if obs.audit_logs_exporter != "none" or log_exporter is not None:
            from bastion.audit.export import OtelAuditExporter

            if log_exporter is None and obs.audit_logs_exporter == "otlp":
                from bastion.observability.otlp import log_exporter as otlp_log_exporter

                log_exporter = otlp_log_exporter()
            elif log_exporter is None:
                from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter

                log_exporter = ConsoleLogRecordExporter()
            sink = OtelAuditExporter(log_exporter, batch=obs.audit_logs_exporter != "none")
        readers = []
        if obs.metrics_exporter == "otlp":
            from bastion.observability.otlp import metric_reader

            readers.append(metric_reader())
        return cls(provider, metrics=Metrics(readers), audit_sink=sink)

    def shutdown(self) -> None:
        self.metrics.shutdown()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.audit_sink is not None:
            self.audit_sink.shutdown()

    def tokens(self, rec: RpcRecord, n: int) -> None:
        """Records n tokens streamed now: the first-token time once, then inter-token gaps."""
        if n <= 0:
            return
        now = time.perf_counter()
        if rec.ttft_s is None:
            rec.ttft_s = now - rec.start
            self.metrics.ttft.record(rec.ttft_s, {"model": rec.metric_model})
        elif rec.last_token_at is not None:  # the tokens of one message share its wait
            self.metrics.inter_token(rec.metric_model, (now - rec.last_token_at) / n, n)
        rec.last_token_at = now

    @contextmanager
    def rpc(
        self, method: str, request_id: str, caller: Any = None, metadata: Iterable[tuple[str, Any]] = ()
    ) -> Iterator[RpcRecord]:
        """``caller`` (a bastion.server.caller.Caller) adds the tenant and principal ids to the span; a W3C
        ``traceparent`` (and ``tracestate``) in the call's ``metadata`` makes it the parent of the span (a
        malformed one is ignored: the span starts a trace of its own). Without a tracer (no span exporter) only
        the metrics are recorded."""
        tenant = caller.tenant if caller is not None else ""
        principal = caller.principal.id if caller is not None else ""
        rec = RpcRecord(method, request_id, tenant, principal)
        scope: AbstractContextManager[Span | None] = nullcontext()
        if self.tracer is not None:
            scope = self.tracer.start_as_current_span(
                f"{SERVICE}/{method}",
                context=trace_parent(metadata),
                kind=SpanKind.SERVER,
                record_exception=False,
                set_status_on_exception=False,
            )
        with scope as span:
            try:
                yield rec
            except BaseException as exc:
                _failed(rec, exc)
                raise
            finally:
                self._finish(span, rec)

    def _finish(self, span: Span | None, rec: RpcRecord) -> None:
        elapsed = time.perf_counter() - rec.start
        code = rec.code.name
        if span is not None:
            _describe(span, rec, code)
        m = self.metrics
        labels = {"method": rec.method, "code": code}
        m.requests.add(1, labels)
        if rec.code != grpc.StatusCode.OK:
            m.errors.add(1, labels)
        m.duration.record(elapsed, {"method": rec.method})
        if rec.served_model and rec.method == "Generate":
            model = {"model": rec.metric_model}
            # Per tenant (bounded by the policy): cached / prompt is the tenant's prefix hit rate.
            per_tenant = {**model, "tenant": rec.tenant or "-"}
            m.prompt_tokens.add(rec.prompt_tokens, per_tenant)
            m.cached_tokens.add(rec.cached_tokens, per_tenant)
            m.output_tokens.add(rec.completion_tokens, model)
            if rec.completion_tokens and elapsed > 0:
                m.tokens_per_s.record(rec.completion_tokens / elapsed, model)


def _failed(rec: RpcRecord, exc: BaseException) -> None:
    """The status code of an RPC that raised, unless the servicer set one: CANCELLED for a cancel, else INTERNAL."""
    if rec.code == grpc.StatusCode.OK:
        rec.code = grpc.StatusCode.CANCELLED if isinstance(exc, asyncio.CancelledError) else grpc.StatusCode.INTERNAL


def _describe(span: Span, rec: RpcRecord, code: str) -> None:
    """The record as the span's attributes (ids, counts, timings; never text or a credential) and status."""
    attrs: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": rec.method,
        "rpc.grpc.status_code": rec.code.value[0],
        "bastion.request_id": rec.request_id,
    }
    if rec.tenant:
        attrs["bastion.tenant"] = rec.tenant
    if rec.principal:
        attrs["bastion.principal"] = rec.principal
    if rec.model:
        attrs["bastion.model"] = rec.model
    if rec.digest:
        attrs["bastion.model_digest"] = rec.digest
    if rec.client_request_id:
        attrs["bastion.client_request_id"] = rec.client_request_id
    if rec.method == "Generate":
        attrs["bastion.usage.prompt_tokens"] = rec.prompt_tokens
        attrs["bastion.usage.completion_tokens"] = rec.completion_tokens
        attrs["bastion.usage.cached_prompt_tokens"] = rec.cached_tokens
        if rec.ttft_s is not None:
            attrs["bastion.ttft_s"] = rec.ttft_s
    span.set_attributes(attrs)
    if rec.code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code))
