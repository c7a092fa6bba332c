"""Metrics: OpenTelemetry instruments exported through a Prometheus scrape endpoint.

Each :class:`Metrics` owns its MeterProvider and a private prometheus_client registry (so several
servers in one process, as in tests, never share or double-register series). The scrape endpoint is a
separate port (``observability.metrics_listen``; "" disables it): loopback, or any address with
``observability.metrics_tls`` (HTTPS; scrapers' client certificates when its client CA is set).

Series (Prometheus names):
  bastion_rpc_requests_total{method,code}        every finished Inference RPC
  bastion_rpc_errors_total{method,code}          the non-OK ones
  bastion_auth_refusals_total{code,reason}       every refused call (reason: its audit event)
  bastion_rpc_duration_seconds{method}           RPC wall time
  bastion_time_to_first_token_seconds{model}     request start -> first streamed token
  bastion_inter_token_latency_seconds{model}     gap between streamed tokens (a message of n tokens: n gaps of
                                                 1/n of its wait; plain counters: bastion.observability.token_gaps)
  bastion_output_tokens_total{model}             generated tokens (rate() gives tokens/s)
  bastion_prompt_tokens_total{model}, bastion_cached_prompt_tokens_total{model}
  bastion_request_output_tokens_per_second{model}  per request, completion tokens / request wall time
  bastion_inflight_requests                      admitted generations
  bastion_engine_running_requests{model}, bastion_engine_waiting_requests{model} (queue depth),
  bastion_engine_kv_usage_ratio{model}           from EngineStats at scrape time (the real engine's scheduler
                                                 writes them at most once a second, and at once when it goes
                                                 idle: bastion.engine.vllm.figures)

Every label value is bounded: ``model`` is a served model's name (never the string a client sent: see
``bastion.observability.telemetry``), ``tenant`` a policy's tenant, ``method`` and ``code`` fixed names.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Histogram, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.process_collector import ProcessCollector

from bastion.config import TlsSettings, parse_listen
from bastion.engine.protocol import EngineStats
from bastion.errors import ConfigError
from bastion.observability.token_gaps import HELP as GAPS_HELP
from bastion.observability.token_gaps import GapHistogram

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

StatsSource = Callable[[], Iterable[tuple[str, EngineStats]]]
# (model, tenant, {held, reserved, cached, preemptions, evictions}) from the tenant-aware schedulers.
TenantKvSource = Callable[[], Iterable[tuple[str, str, dict[str, int]]]]

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5)
_RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, extra_readers: Sequence[Any] = ()) -> None:
        """``extra_readers``: more OpenTelemetry metric readers (the OTLP push: bastion.observability.otlp)."""
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self._reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        # Exemplars (a sampled trace id kept per histogram bucket) reach only an OTLP collector: the Prometheus
        # exposition has none. Without an OTLP reader they are not collected — issue 19's profile found their
        # filter and reservoirs in every per-token histogram record.
        self._provider = MeterProvider(
            metric_readers=[self._reader, *extra_readers],
            resource=Resource.create({"service.name": "bastion"}),
            exemplar_filter=None if extra_readers else AlwaysOffExemplarFilter(),
        )
        self._stats: StatsSource = lambda: ()
        self._tenant_kv: TenantKvSource = lambda: ()
        self._inflight: Callable[[], int] = lambda: 0
        self._releases: Callable[[], Iterable[tuple[str, str]]] = lambda: ()
        self._drift: Callable[[], Iterable[Any]] = lambda: ()
        self._redteam: Callable[[], Iterable[Any]] = lambda: ()
        self._audit: Callable[[], dict[str, float]] = dict
        self._http: WSGIServer | None = None
        self.http_address = ""  # bound HOST:PORT of the scrape endpoint, once started
        m = self._provider.get_meter("bastion.server")
        self.requests = m.create_counter("bastion_rpc_requests", "{request}", "Finished Inference RPCs")
        self.errors = m.create_counter("bastion_rpc_errors", "{request}", "Inference RPCs that ended non-OK")
        self.duration = m.create_histogram(
            "bastion_rpc_duration", "s", "RPC wall time", explicit_bucket_boundaries_advisory=_DURATION_BUCKETS
        )
        self.ttft = m.create_histogram(
            "bastion_time_to_first_token",
            "s",
            "Request start to first streamed token",
            explicit_bucket_boundaries_advisory=_TTFT_BUCKETS,
        )
        # The per-token histogram: plain counters on the scrape (bastion.observability.token_gaps), or the
        # OpenTelemetry instrument when an OTLP push needs it (one source for the series either way).
        self._gaps: GapHistogram | None = None
        self._itl: Histogram | None = None
        if extra_readers:
            self._itl = m.create_histogram(
                "bastion_inter_token_latency",
                "s",
                GAPS_HELP,
                explicit_bucket_boundaries_advisory=_ITL_BUCKETS,
            )
        else:
            self._gaps = GapHistogram(_ITL_BUCKETS)
            self.registry.register(self._gaps)
        self._refusals = m.create_counter(
            "bastion_auth_refusals",
            "{request}",
            "Refused calls, by status code and audit event (authentication_failed, authorization_denied, "
            "identity_override_attempt, rate_limited, audit_unavailable, refused)",
        )
        self.output_tokens = m.create_counter("bastion_output_tokens", "{token}", "Generated tokens")
        self.prompt_tokens = m.create_counter("bastion_prompt_tokens", "{token}", "Prompt tokens")
        self.cached_tokens = m.create_counter(
            "bastion_cached_prompt_tokens", "{token}", "Prompt tokens served from the prefix cache"
        )
        self.tokens_per_s = m.create_histogram(
            "bastion_request_output_tokens_per_second",
            "{token}/s",
            "Per request: completion tokens / request wall time",
            explicit_bucket_boundaries_advisory=_RATE_BUCKETS,
        )
        m.create_observable_gauge(
            "bastion_inflight_requests", [self._observe_inflight], "{request}", "Admitted generations"
        )
        m.create_observable_gauge(
            "bastion_engine_running_requests", [self._observe("running")], "{request}", "Running in the engine"
        )
        m.create_observable_gauge(
            "bastion_engine_waiting_requests", [self._observe("waiting")], "{request}", "Queued in the engine"
        )
        m.create_observable_gauge(
            "bastion_engine_kv_usage_ratio", [self._observe("kv_usage")], "1", "Fraction of KV blocks in use"
        )
        m.create_observable_gauge(
            "bastion_model_release",
            [self._observe_release],
            "1",
            "1 for the model's current release state (released, evaluation_only, quarantined)",
        )
        for attr, kind, unit, what in (
            (
                "delta",
                "gauge",
                "1",
                "Drift: largest per-canary log-prob change against the go-live baseline (nats/token)",
            ),
            ("tolerance", "gauge", "1", "Drift: the tolerance the change is held to"),
            ("checks", "counter", "{check}", "Drift checks run"),
            ("alerts", "counter", "{alert}", "Confirmed drift alerts"),
        ):
            make = m.create_observable_gauge if kind == "gauge" else m.create_observable_counter
            name = f"bastion_drift_logprob_{attr}" if kind == "gauge" else f"bastion_drift_{attr}"
            make(name, [self._observe_drift(attr)], unit, what)
        m.create_observable_counter(
            "bastion_redteam_probes",
            [self._observe_redteam(0)],
            "{probe}",
            "Continuous red-team probes run, per family",
        )
        m.create_observable_counter(
            "bastion_redteam_findings",
            [self._observe_redteam(1)],
            "{finding}",
            "Continuous red-team findings (bad outcomes), per family",
        )
        for attr, what in (
            ("alerts", "Confirmed red-team regressions"),
            ("deferred", "Red-team batches deferred for tenant traffic"),
            ("under_load", "Red-team probes of the per-interval minimum run under tenant load (reserved slot)"),
        ):
            m.create_observable_counter(f"bastion_redteam_{attr}", [self._observe_redteam_total(attr)], "{event}", what)

        for key, kind, unit, what in (
            ("disk_free_bytes", "gauge", "By", "Free space on the audit log's file system at its last look"),
            ("disk_alarm", "gauge", "1", "Audit disk level: 0 ok, 1 below alarm_free_bytes, 2 below min_free_bytes"),
            ("accepting", "gauge", "1", "1 while the audit log takes new calls (0: disk full or below its reserve)"),
            ("refusals_coalesced", "counter", "{refusal}", "Refused calls recorded as counts, not one record each"),
        ):
            make = m.create_observable_gauge if kind == "gauge" else m.create_observable_counter
            make(f"bastion_audit_{key}", [self._observe_audit(key)], unit, what)

        for field, kind, what in (
            ("held", "gauge", "KV blocks held by the tenant's requests"),
            ("reserved", "gauge", "KV blocks reserved for the tenant"),
            ("cached", "gauge", "Free KV blocks still caching the tenant's prefixes"),
            ("preemptions", "counter", "Preemptions of the tenant's requests"),
            ("evictions", "counter", "The tenant's cached KV blocks evicted"),
        ):
            make = m.create_observable_gauge if kind == "gauge" else m.create_observable_counter
            unit = "{block}" if kind == "gauge" else "{event}"
            name = f"bastion_tenant_kv_blocks_{field}" if kind == "gauge" else f"bastion_tenant_kv_{field}"
            make(name, [self._observe_tenant_kv(field)], unit, what)

    def inter_token(self, model: str, gap: float, n: int) -> None:
        """``n`` streamed tokens that arrived ``gap`` seconds apart each (one message's share of its wait)."""
        if self._gaps is not None:
            self._gaps.observe(model, gap, n)
        elif self._itl is not None:
            attrs = {"model": model}
            for _ in range(n):
                self._itl.record(gap, attrs)

    def count_refusal(self, code: str, event: str) -> None:
        """One refused call. Both labels come from closed sets (gRPC status names, the audit events)."""
        self._refusals.add(1, {"code": code, "reason": event})

    def bind_tenant_kv(self, source: TenantKvSource) -> None:
        self._tenant_kv = source

    def _observe_tenant_kv(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                return [
                    Observation(f[field], {"model": model, "tenant": tenant}) for model, tenant, f in self._tenant_kv()
                ]
            except Exception:  # a scrape must never fail because the stats are unreadable
                log.debug("per-tenant KV stats unavailable", exc_info=True)
                return []

        return callback

    def bind_drift(self, source: Callable[[], Iterable[Any]]) -> None:
        """The drift monitors' states (bastion.assurance.drift.DriftState)."""
        self._drift = source

    def _observe_drift(self, attr: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                return [
                    Observation(float(getattr(s, attr)), {"model": s.model})
                    for s in self._drift()
                    if s.status not in ("pending", "error") and getattr(s, attr) != float("inf")
                ]
            except Exception:
                log.debug("drift states unavailable", exc_info=True)
                return []

        return callback

    def bind_redteam(self, source: Callable[[], Iterable[Any]]) -> None:
        """The red-team schedulers' states (bastion.assurance.redteam.RedTeamState)."""
        self._redteam = source

    def _observe_redteam(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                return [
                    Observation(counts[index], {"model": s.model, "family": fam})
                    for s in self._redteam()
                    for fam, counts in s.per_family.items()
                ]
            except Exception:
                log.debug("red-team states unavailable", exc_info=True)
                return []

        return callback

    def _observe_redteam_total(self, attr: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                return [Observation(getattr(s, attr), {"model": s.model}) for s in self._redteam()]
            except Exception:
                log.debug("red-team states unavailable", exc_info=True)
                return []

        return callback

    def bind_audit(self, source: Callable[[], dict[str, float]]) -> None:
        """The audit log's disk figures and coalesced refusals, by the names of the bastion_audit_* metrics."""
        self._audit = source

    def _observe_audit(self, key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            value = self._audit().get(key)
            return [] if value is None else [Observation(value)]

        return callback

    def bind_releases(self, source: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """(model, release state) pairs: the go-live gate's decisions (bastion.assurance.release)."""
        self._releases = source

    def _observe_release(self, _options: CallbackOptions) -> Iterable[Observation]:
        from bastion.assurance.release import EVALUATION_ONLY, QUARANTINED, RELEASED

        try:
            return [
                Observation(1 if state == s else 0, {"model": model, "state": s})
                for model, state in self._releases()
                for s in (RELEASED, EVALUATION_ONLY, QUARANTINED)
            ]
        except Exception:
            log.debug("release states unavailable", exc_info=True)
            return []

    def bind(self, *, stats: StatsSource, inflight: Callable[[], int]) -> None:
        """Connects the scrape-time gauges to the server state."""
        self._stats = stats
        self._inflight = inflight

    def _observe_inflight(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._inflight())]

    # Gauge callbacks run on the scrape thread: they only read counters the engine already keeps.
    def _observe(self, attr: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                return [Observation(float(getattr(s, attr)), {"model": name}) for name, s in self._stats()]
            except Exception:  # a scrape must never fail because one engine misbehaves
                log.debug("engine stats unavailable", exc_info=True)
                return []

        return callback

    def start_http(self, listen: str, tls: TlsSettings | None = None) -> str:
        """Serves /metrics on HOST:PORT (with ``tls``: HTTPS, TLS 1.2+, and client certificates from its
        client CA when set); returns the bound address. ConfigError when the files cannot be loaded."""
        _, host, port = parse_listen(listen)
        options: dict[str, Any] = {}
        if tls is not None and tls.enabled:
            options = {
                "certfile": str(tls.cert_file),
                "keyfile": str(tls.key_file),
                "client_cafile": str(tls.client_ca_file) if tls.client_ca_file else None,
                "client_auth_required": tls.client_ca_file is not None,
                "tls_min_version": ssl.TLSVersion.TLSv1_2,
            }
        try:
            server, _thread = start_http_server(port or 0, addr=host, registry=self.registry, **options)
        except ssl.SSLError as exc:
            raise ConfigError(f"observability.metrics_tls: cannot load its files ({type(exc).__name__})") from None
        self._http = server
        bound = f"[{host}]:{server.server_port}" if ":" in host else f"{host}:{server.server_port}"
        self.http_address = bound
        log.info("metrics on %s://%s/metrics", "https" if options else "http", bound)
        return bound

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def shutdown(self) -> None:
        self.stop_http()
        self._provider.shutdown()
