"""Server lifecycle: bind and start, load the engine pool, serve, drain, stop.

Order (each step logged once):
  0. security: the tenancy policy, the authenticator and the audit log (recovered and continued); a
     missing piece is a start failure (exit 1), never an open server; then the go-live gate, whose
     quarantines are re-derived from the audit log (a log that cannot be read back is a start failure);
  1. build the grpc.aio server (explicit limits, the auth interceptor), register Inference, Admin and
     grpc.health.v1, bind, start; then the health listener (``[health] listen``: grpc.health.v1 only, no
     credentials, limits of its own; ``server/health_listener.py``) when configured;
     health is NOT_SERVING, Inference answers UNAVAILABLE; then the OpenAI-compatible HTTP API
     (``[http] listen``, ``server/http/``) when configured, over the same gate and servicer;
  2. ``await pool_factory(contract)`` (the engine-process contract, ``bastion.engine.process``) (a minute or more for vLLM); health turns SERVING once the pool is ready,
     and a watchdog keeps it in step with the engines (NOT_SERVING when one dies);
  3. on SIGTERM/SIGINT (or ``stop_event``): health NOT_SERVING for good, new Generate/Tokenize
     calls refused with UNAVAILABLE "server is shutting down" (the listener stays up meanwhile, so
     health checks keep answering and no connection is reset), in-flight generations run on for up
     to ``server.grace_period_s``; past it they are aborted: the engine request is aborted and the
     client's stream ends with a final FINISH_REASON_ABORT message (usage so far) and status OK;
     a second signal aborts them at once;
  4. ``server.stop(FLUSH_S)`` on both listeners in ``finally`` (finished calls send their status; health
     watches are then cancelled), then ``pool.shutdown()``, then the audit log is closed (stop record,
     checkpoint).
A failing audit log (write or fsync error) turns health NOT_SERVING and fails every later call; an audit
log without space (full, or below ``audit.min_free_bytes``) turns it NOT_SERVING and refuses new calls until
space is back.
Exit codes: 0 after a clean stop, 1 when binding or loading the engine pool failed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from bastion.assurance.canaries import DriftSecret
from bastion.assurance.canaries import load_secret as load_drift_secret
from bastion.assurance.drift import BaselineLedger
from bastion.assurance.release import ReleaseBook
from bastion.audit.log import AuditLog
from bastion.auth.api_keys import revoke as revoke_api_key
from bastion.config import Settings
from bastion.engine.process import EngineProcessEnv
from bastion.engine.protocol import EnginePool, EngineStats
from bastion.errors import BastionError, ConfigError
from bastion.isolation.kv_metrics import TenantKvStats
from bastion.observability.logs import setup_logging
from bastion.observability.telemetry import Telemetry
from bastion.server import event_loop
from bastion.server.admin import AdminServicer
from bastion.server.background import prune_content, redteam_baseline, start_drift, start_redteam
from bastion.server.health import NOT_SERVING, WATCHDOG_INTERVAL_S, Health
from bastion.server.health_listener import start_health_listener
from bastion.server.http.api import HttpApi
from bastion.server.http.listener import HttpListener, start_http_listener
from bastion.server.listener import bind, build_server, main_watch_limits
from bastion.server.security import Security, build_security
from bastion.server.servicer import InferenceServicer, ServerState
from bastion.v1 import admin_pb2_grpc as apb_grpc
from bastion.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Starts the engines; the argument is the contract their processes inherit (bastion.engine.process).
PoolFactory = Callable[[EngineProcessEnv], Awaitable[EnginePool]]
# After the grace period: time for aborted streams to send their final message before the hard stop.
ABORT_MARGIN_S = 2.0
# After the drain: time for finished calls to send their last messages and status.
FLUSH_S = 1.0


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, BastionError) else f"{type(exc).__name__}: {exc}"
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return line[:500]


def _stats(state: ServerState) -> Iterable[tuple[str, EngineStats]]:
    pool = state.pool
    return [] if pool is None else [(e.info.name, e.stats()) for e in pool.all()]


async def _load_pool(load: Callable[[], Awaitable[EnginePool]], stop_event: asyncio.Event) -> EnginePool | None:
    """The pool, or None when a stop was requested first (the load is then cancelled)."""
    loading = asyncio.ensure_future(load())
    stopping = asyncio.ensure_future(stop_event.wait())
    try:
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if loading.done():
        return loading.result()
    log.info("stop requested while loading the engine pool; cancelling the load")
    loading.cancel()
    try:
        await loading
    except BaseException:
        log.debug("engine pool load ended on cancel", exc_info=True)
    return None


async def _drain(health: Health, state: ServerState, grace: float) -> None:
    """Refuses new work and lets generations finish within grace; aborts the rest.

    The gRPC server keeps running meanwhile, so health checks answer NOT_SERVING and new Inference
    calls get a clean UNAVAILABLE ("server is shutting down") instead of a reset connection.
    """
    await health.shutting_down()
    state.admission.close()
    active = state.admission.active
    if active:
        log.info("draining %d in-flight requests (grace %.1fs)", active, grace)
    if not await state.admission.wait_idle(grace):
        n = state.admission.abort_all()
        log.warning("grace period over: aborting %d in-flight requests", n)
        await state.admission.wait_idle(ABORT_MARGIN_S)


class _StartFailed(Exception):
    """A start step failed: logged once as the reason, and serve() returns 1 (never an open server)."""


class _Run:
    """What one serve() call owns. Each step does one job; close() undoes whatever the steps did."""

    def __init__(self, settings: Settings, telemetry: Telemetry | None, watchdog_interval: float) -> None:
        self.settings = settings
        self.owns_telemetry = telemetry is None
        self.telemetry = telemetry or Telemetry.from_settings(settings)
        self.watchdog_interval = watchdog_interval
        self.health = Health()
        self.loop = asyncio.get_running_loop()
        self.security: Security | None = None
        self.releases: ReleaseBook | None = None
        self.redteam_baseline: dict[str, Any] | None = None
        self.drift_secret: DriftSecret | None = None
        self.drift_ledger = BaselineLedger()
        self.state: ServerState | None = None
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None
        self.http: HttpListener | None = None
        self.inference: InferenceServicer | None = None
        self.started = False
        self.pool: EnginePool | None = None
        self.kv_stats: Path | None = None
        self.tasks: list[asyncio.Future[None]] = []
        self.signals: list[signal.Signals] = []

    def open_security(self, factory: Callable[..., Security]) -> Security:
        """Step 0: the tenancy policy, the authenticator and the audit log (recovered and continued)."""

        def on_audit_failure() -> None:
            log.error("the audit log failed: health NOT_SERVING; every call is refused until restart")
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.health.shutting_down()))

        try:
            self.security = factory(self.settings, on_audit_failure, self.telemetry.audit_sink)
        except (BastionError, OSError) as exc:
            raise _StartFailed(f"cannot start: {_one_line(exc)}") from None
        self.tasks.append(asyncio.ensure_future(self.security.recorder.refusals.run()))
        self.security.recorder.on_refusal = self.telemetry.metrics.count_refusal
        return self.security

    def open_assurance(self, security: Security) -> ServerState:
        """The go-live gate's release book (its quarantines re-derived from the audit log) and the red-team
        baseline; then the state the servicers share."""
        try:
            self.releases = ReleaseBook(self.settings.assurance, self.settings.cache_dir)
            self.redteam_baseline = redteam_baseline(self.settings)
            if self.settings.assurance.drift.enabled:  # the canaries' seed (created 0600 when defaulted)
                self.drift_secret = load_drift_secret(self.settings.assurance.drift, self.settings.cache_dir)
        except (BastionError, OSError) as exc:  # the accepted probe suites do not verify, a bad drift seed
            raise _StartFailed(f"cannot start: {_one_line(exc)}") from None
        try:
            # One pass: the quarantines and the drift baselines the log records (a missing one is an alarm).
            self.releases.restore_quarantines(security.audit.directory, observe=self.drift_ledger.observe)
        except BastionError as exc:  # fail closed: never start having forgotten a quarantine
            raise _StartFailed(
                f"cannot start: quarantines cannot be re-derived from the audit log: {_one_line(exc)}"
            ) from None
        _warn_on_open_release(self.settings, self.releases)
        s = self.state = ServerState(
            self.settings, security.guard, security.recorder, security.content, security.partition, self.releases
        )
        _bind_metrics(self.telemetry, s, self.releases)
        return s

    def stop_on_signals(self, state: ServerState) -> asyncio.Event:
        """SIGTERM/SIGINT set the returned event; a second one aborts in-flight requests at once."""
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                log.warning("second stop signal: aborting in-flight requests now")
                state.admission.abort_all()
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, on_signal)
            self.signals.append(sig)
        return stop

    async def start_listener(
        self, security: Security, state: ServerState, on_bound: Callable[[str], None] | None
    ) -> None:
        """Step 1: Inference, Admin and health registered, bound and started; health NOT_SERVING."""
        server = self.server = build_server(self.settings.server, [security.interceptor])
        self.inference = InferenceServicer(state, self.telemetry)
        _add_services(server, self.inference, state, self.telemetry, self.health, self.settings)
        try:
            address, description = bind(server, self.settings.server)
            if self.settings.observability.metrics_listen:
                obs = self.settings.observability
                self.telemetry.metrics.start_http(obs.metrics_listen, obs.metrics_tls)
        except (ConfigError, OSError) as exc:
            raise _StartFailed(f"cannot start: {_one_line(exc)}") from None
        await self.health.set(NOT_SERVING)
        await self.health.set_live(True)
        await server.start()
        self.started = True
        log.info("listening on %s (%s); health is NOT_SERVING until the engine is ready", address, description)
        log.info("try: bastion health --target %s ; bastion generate --target %s 'Hello'", address, address)
        if on_bound is not None:
            on_bound(address)

    async def start_health_listener(self, on_bound: Callable[[str], None] | None) -> None:
        """Step 1b: the health listener on health.listen (grpc.health.v1 only, no credentials), if set."""
        h = self.settings.health
        if not h.listen:
            log.info("health listener off (health.listen is empty): probes use the main listener")
            return
        await self.health.set(NOT_SERVING)  # already so after step 1; never SERVING before the engine
        try:
            self.health_server, address, description = await start_health_listener(h, self.health)
        except (ConfigError, OSError) as exc:
            raise _StartFailed(f"cannot start: {_one_line(exc)}") from None
        log.info("health listener on %s (%s): grpc.health.v1 only, no credentials", address, description)
        if description == "plaintext":
            log.warning("health listener: plaintext off loopback (health.plaintext_off_loopback): statuses only")
        if on_bound is not None:
            on_bound(address)

    async def start_http_listener(self, security: Security, on_bound: Callable[[str], None] | None) -> None:
        """Step 1c: the OpenAI-compatible HTTP API on http.listen (bastion.server.http), if set: the same gate
        and the same servicer as the gRPC API."""
        h = self.settings.http
        if not h.listen:
            return
        assert self.inference is not None
        try:
            api = HttpApi(h, self.inference, security.gate, self.health, self.settings.server.stream_write_timeout_s)
            self.http = await start_http_listener(h, api)
        except (ConfigError, OSError) as exc:
            raise _StartFailed(f"cannot start: {_one_line(exc)}") from None
        scheme = "https" if h.tls.enabled else "http (plaintext, loopback)"
        log.info("HTTP API (OpenAI-compatible) on %s (%s)", self.http.address, scheme)
        if on_bound is not None:
            on_bound(self.http.address)

    def engine_process(self, security: Security) -> EngineProcessEnv:
        """The contract vLLM's processes inherit: with a partition key file, the EngineCore keys its prefix
        cache by tenant and runs the tenant KV scheduler, which reports per-tenant KV figures to kv_stats (without
        one the engine makes its own directory for its figures)."""
        partition = security.partition
        if partition is None or partition.source is None:
            log.warning("tenant isolation is OFF in the engine: the security layer named no partition key file")
            return EngineProcessEnv()
        self.kv_stats = Path(tempfile.mkdtemp(prefix="bastion-kv-stats-"))
        guard = security.guard
        stats = TenantKvStats(self.kv_stats, partition, lambda: guard.policy.tenants)
        self.telemetry.metrics.bind_tenant_kv(stats.rows)
        return EngineProcessEnv(partition_key_file=partition.source.resolve(), stats_dir=self.kv_stats)

    async def load_pool(
        self, factory: PoolFactory, process: EngineProcessEnv, stop: asyncio.Event
    ) -> EnginePool | None:
        """Step 2: the engines (minutes for vLLM on CPU); None when a stop came first."""
        try:
            return await _load_pool(functools.partial(factory, process), stop)
        except Exception as exc:
            log.debug("engine pool failure detail", exc_info=exc)
            raise _StartFailed(f"engine pool failed to start: {_one_line(exc)}") from None

    async def serve_pool(self, state: ServerState, pool: EnginePool) -> None:
        """Requests reach the pool; the watchdog turns health SERVING; drift, red-team and pruning start."""
        assert self.releases is not None
        self.pool = state.pool = pool
        pool.attach_audit(state.recorder)
        await asyncio.to_thread(self.releases.reload, [e.info for e in pool.all()])
        self.tasks += start_drift(self.settings, state, pool, self.drift_secret, self.drift_ledger)
        self.tasks += start_redteam(self.settings, state, pool, self.redteam_baseline)
        audit = state.recorder.log
        self.tasks.append(
            asyncio.ensure_future(
                self.health.follow(pool, self.watchdog_interval, audit_accepting=lambda: audit.accepting)
            )
        )
        if state.content is not None:
            self.tasks.append(asyncio.ensure_future(prune_content(state.content, state)))
        log.info("engine pool loaded: %s", ", ".join(f"{e.info.name} ({e.info.digest})" for e in pool.all()))

    async def close(self) -> None:
        """Step 4: the listener stops (finished calls send their status), then the pool, then the audit log."""
        for t in self.tasks:
            t.cancel()
        if self.started:
            await self.health.shutting_down()
        if self.state is not None:
            self.state.admission.close()
        if self.server is not None:
            # Drained handlers have returned; their calls get FLUSH_S to send the final status, then
            # whatever is left (health watches, stragglers) is cancelled. The health listener stops with it.
            listeners = [s for s in (self.server, self.health_server) if s is not None]
            stops = [s.stop(FLUSH_S) for s in listeners] + ([self.http.stop(FLUSH_S)] if self.http else [])
            await asyncio.gather(*stops)
            self.telemetry.metrics.stop_http()
        if self.pool is not None:
            try:
                await self.pool.shutdown()
            except Exception as exc:  # noqa: BLE001 - shutdown goes on: the audit log must still close
                log.error("engine pool shutdown failed: %s", _one_line(exc))
        for sig in self.signals:
            self.loop.remove_signal_handler(sig)
        if self.security is not None:
            try:
                await self.security.recorder.refusals.flush()  # the last window's coalesced refusals
            except Exception as exc:  # noqa: BLE001 - logged; the log must still close
                log.error("writing the coalesced refusal records failed: %s", _one_line(exc))
            try:
                await self.security.audit.aclose()
            except Exception as exc:  # noqa: BLE001 - logged; the process is exiting either way
                log.error("closing the audit log failed: %s", _one_line(exc))
        if self.kv_stats is not None:
            shutil.rmtree(self.kv_stats, ignore_errors=True)
        if self.owns_telemetry:
            self.telemetry.shutdown()


async def serve(
    settings: Settings,
    pool_factory: PoolFactory,
    *,
    stop_event: asyncio.Event | None = None,
    on_bound: Callable[[str], None] | None = None,
    on_health_bound: Callable[[str], None] | None = None,
    on_http_bound: Callable[[str], None] | None = None,
    telemetry: Telemetry | None = None,
    watchdog_interval: float = WATCHDOG_INTERVAL_S,
    security_factory: Callable[..., Security] = build_security,
) -> int:
    """Runs the server until stop_event is set (or SIGTERM/SIGINT when no event is given).

    ``security_factory`` builds the authenticator, tenancy guard and audit log; the CLI always uses
    :func:`build_security`. Only benchmarks/ passes another (an open server, to measure what security costs).
    ``on_bound``, ``on_health_bound`` and ``on_http_bound`` receive the addresses the main, the health and the
    HTTP API listener bound.
    """
    try:
        run = _Run(settings, telemetry, watchdog_interval)
    except ConfigError as exc:  # the telemetry exporters (a plaintext OTLP endpoint off loopback)
        log.error("cannot start: %s", _one_line(exc))
        return 1
    try:
        security = run.open_security(security_factory)
        state = run.open_assurance(security)
        stop = stop_event or run.stop_on_signals(state)
        await run.start_listener(security, state, on_bound)
        await run.start_health_listener(on_health_bound)
        await run.start_http_listener(security, on_http_bound)
        pool = await run.load_pool(pool_factory, run.engine_process(security), stop)
        if pool is None:
            return 0
        await run.serve_pool(state, pool)
        await stop.wait()
        log.info("stop requested: health NOT_SERVING, draining")
        await _drain(run.health, state, settings.server.grace_period_s)
        return 0
    except _StartFailed as exc:
        log.error("%s", exc)
        return 1
    finally:
        await run.close()


def _warn_on_open_release(settings: Settings, releases: ReleaseBook) -> None:
    if not releases.enforced:
        log.warning(
            "assurance.require_attestation = false: models are served to tenants WITHOUT a security "
            "evaluation attestation (development only)"
        )
    elif not settings.assurance.trusted_keys:
        log.warning(
            "assurance.trusted_keys is empty: no attestation can release a model; every model stays "
            "evaluation-only (bastion eval needs an evaluator principal)"
        )


def _bind_metrics(telemetry: Telemetry, state: ServerState, releases: ReleaseBook) -> None:
    telemetry.metrics.bind(stats=lambda: _stats(state), inflight=lambda: state.admission.inflight)
    telemetry.metrics.bind_drift(lambda: [m.state for m in state.drift.values()])
    telemetry.metrics.bind_audit(lambda: _audit_figures(state))
    telemetry.metrics.bind_redteam(lambda: [t.state for t in state.redteam.values()])
    telemetry.metrics.bind_releases(
        lambda: (
            [] if state.pool is None else [(e.info.name, releases.release(e.info.name).state) for e in state.pool.all()]
        )
    )


def _audit_figures(state: ServerState) -> dict[str, float]:
    log_ = state.recorder.log
    figures = {"refusals_coalesced": float(state.recorder.refusals.coalesced_total)}
    if isinstance(log_, AuditLog):
        figures.update(
            disk_free_bytes=float(log_.disk_free_bytes),
            disk_alarm=float(log_.disk_level),
            accepting=float(log_.accepting),
        )
    return figures


def _add_services(
    server: grpc.aio.Server,
    inference: InferenceServicer,
    state: ServerState,
    telemetry: Telemetry,
    health: Health,
    settings: Settings,
) -> None:
    pb_grpc.add_InferenceServicer_to_server(inference, server)
    admin = AdminServicer(
        state,
        telemetry,
        policy_file=settings.tenancy.policy_file,
        api_key_store=settings.auth.api_keys.file,
        revoke_key=revoke_api_key,
    )
    apb_grpc.add_AdminServicer_to_server(admin, server)
    # Watch here is capped below the slots Generate needs (server/listener.py).
    health_pb2_grpc.add_HealthServicer_to_server(health.endpoint(main_watch_limits(settings.health)), server)


def run_server(settings: Settings, pool_factory: PoolFactory) -> int:
    """Blocking entry point for ``bastion serve``: logging, the event loop, the exit code."""
    setup_logging(settings.observability.log_level, settings.observability.log_format)
    log.debug("settings: %s", settings.redacted())
    try:
        return event_loop.run(serve(settings, pool_factory), settings.server.event_loop)
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130
