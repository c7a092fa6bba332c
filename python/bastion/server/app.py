"""Server lifecycle: bind and start, load the engine pool, serve, drain, stop.

Order (each step logged once):
  0. security: the tenancy policy, the authenticator and the audit log (recovered and continued); a
     missing piece is a start failure (exit 1), never an open server;
  1. build the grpc.aio server (explicit limits, the auth interceptor), register Inference, Admin and
     grpc.health.v1, bind, start;
     health is NOT_SERVING, Inference answers UNAVAILABLE;
  2. ``await pool_factory()`` (a minute or more for vLLM); health turns SERVING once the pool is ready,
     and a watchdog keeps it in step with the engines (NOT_SERVING when one dies);
  3. on SIGTERM/SIGINT (or ``stop_event``): health NOT_SERVING for good, new Generate/Tokenize
     calls refused with UNAVAILABLE "server is shutting down" (the listener stays up meanwhile, so
     health checks keep answering and no connection is reset), in-flight generations run on for up
     to ``server.grace_period_s``; past it they are aborted: the engine request is aborted and the
     client's stream ends with a final FINISH_REASON_ABORT message (usage so far) and status OK;
     a second signal aborts them at once;
  4. ``server.stop(FLUSH_S)`` in ``finally`` (finished calls send their status; health watches are
     then cancelled), then ``pool.shutdown()``, then the audit log is closed (stop record, checkpoint).
A failing audit log (write or fsync error) turns health NOT_SERVING and fails every later call.
Exit codes: 0 after a clean stop, 1 when binding or loading the engine pool failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2_grpc

from bastion.assurance.drift import DriftMonitor
from bastion.assurance.release import ReleaseBook
from bastion.audit.content import PRUNE_EVERY_S, ContentStore
from bastion.auth.api_keys import revoke as revoke_api_key
from bastion.config import Settings
from bastion.engine.protocol import EnginePool, EngineStats
from bastion.engine.vllm import block_hasher
from bastion.errors import BastionError, ConfigError
from bastion.isolation.kv_metrics import ENV_STATS_DIR, TenantKvStats
from bastion.observability.logs import setup_logging
from bastion.observability.telemetry import Telemetry
from bastion.server.admin import AdminServicer
from bastion.server.health import NOT_SERVING, WATCHDOG_INTERVAL_S, Health
from bastion.server.listener import bind, build_server
from bastion.server.security import Security, build_security
from bastion.server.servicer import InferenceServicer, ServerState
from bastion.v1 import admin_pb2_grpc as apb_grpc
from bastion.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

PoolFactory = Callable[[], Awaitable[EnginePool]]
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


def _enable_reflection(server: object) -> None:
    try:
        from grpc_reflection.v1alpha import reflection
    except ImportError:
        raise ConfigError("server.reflection needs the grpcio-reflection package") from None
    from grpc_health.v1 import health_pb2

    from bastion.v1 import admin_pb2, inference_pb2

    names = (
        inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)


async def _prune_content(content: ContentStore, state: ServerState) -> None:
    """Deletes opt-in content past each tenant's retention, now and then hourly."""
    while True:
        days = {
            t: p.content_logging.retention_days
            for t, p in state.guard.policy.tenants.items()
            if p.content_logging.enabled
        }
        try:
            await asyncio.to_thread(content.prune, days)
        except OSError as exc:
            log.error("content retention pruning failed: %s", exc.strerror or type(exc).__name__)
        await asyncio.sleep(PRUNE_EVERY_S)


async def _load_pool(pool_factory: PoolFactory, stop_event: asyncio.Event) -> EnginePool | None:
    """The pool, or None when a stop was requested first (the load is then cancelled)."""
    loading = asyncio.ensure_future(pool_factory())
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


def _start_drift(settings: Settings, state: ServerState, pool: EnginePool) -> list[asyncio.Future[None]]:
    """A drift monitor per engine that can score log-probs (bastion.assurance.drift)."""
    if not settings.assurance.drift.enabled:
        return []
    tasks: list[asyncio.Future[None]] = []
    for engine in pool.all():
        if not hasattr(engine, "prompt_logprobs"):
            continue

        async def on_alert(model: str, digest: str, reason: str, action: str) -> None:
            await state.recorder.alert(event="drift", model=model, model_digest=digest, reason=reason, action=action)

        monitor = DriftMonitor(settings.assurance.drift, settings.cache_dir, engine, state.releases, on_alert)
        state.drift[engine.info.name] = monitor
        tasks.append(asyncio.ensure_future(monitor.run()))
    return tasks


def _redteam_baseline(settings: Settings) -> dict[str, Any] | None:
    rt = settings.assurance.redteam
    if not rt.enabled or rt.baseline is None:
        return None
    from bastion.assurance.report import load_summary

    return load_summary(rt.baseline)  # ConfigError naming the file: a start failure


def _start_redteam(
    settings: Settings, state: ServerState, pool: EnginePool, baseline: dict[str, Any] | None
) -> list[asyncio.Future[None]]:
    """A continuous red-team scheduler per engine (bastion.assurance.redteam)."""
    if not settings.assurance.redteam.enabled:
        return []
    from bastion.assurance.redteam import RedTeam

    async def on_event(event: str, model: str, digest: str, reason: str, action: str) -> None:
        await state.recorder.alert(event=event, model=model, model_digest=digest, reason=reason, action=action)

    tasks: list[asyncio.Future[None]] = []
    for engine in pool.all():
        team = RedTeam(
            settings.assurance.redteam, engine, state.releases, lambda: state.admission.inflight, on_event, baseline
        )
        state.redteam[engine.info.name] = team
        tasks.append(asyncio.ensure_future(team.run()))
    return tasks


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


async def serve(
    settings: Settings,
    pool_factory: PoolFactory,
    *,
    stop_event: asyncio.Event | None = None,
    on_bound: Callable[[str], None] | None = None,
    telemetry: Telemetry | None = None,
    watchdog_interval: float = WATCHDOG_INTERVAL_S,
    security_factory: Callable[..., Security] = build_security,
) -> int:
    """Runs the server until stop_event is set (or SIGTERM/SIGINT when no event is given).

    ``security_factory`` builds the authenticator, tenancy guard and audit log; the CLI always uses
    :func:`build_security`. Only benchmarks/ passes another (an open server, to measure what security costs).
    """
    loop = asyncio.get_running_loop()
    owns_telemetry = telemetry is None
    telemetry = telemetry or Telemetry.from_settings(settings)
    health = Health()

    def on_audit_failure() -> None:
        log.error("the audit log failed: health NOT_SERVING; every call is refused until restart")
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(health.shutting_down()))

    try:
        security: Security = security_factory(settings, on_audit_failure, telemetry.audit_sink)
    except (ConfigError, BastionError, OSError) as exc:
        log.error("cannot start: %s", _one_line(exc))
        if owns_telemetry:
            telemetry.shutdown()
        return 1
    content = security.content
    try:
        releases = ReleaseBook(settings.assurance, settings.cache_dir)
        redteam_baseline = _redteam_baseline(settings)
    except (ConfigError, BastionError, OSError) as exc:  # the accepted probe suites do not verify
        log.error("cannot start: %s", _one_line(exc))
        await security.audit.aclose()
        if owns_telemetry:
            telemetry.shutdown()
        return 1
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
    state = ServerState(settings, security.guard, security.recorder, content, security.partition, releases)
    telemetry.metrics.bind(stats=lambda: _stats(state), inflight=lambda: state.admission.inflight)
    telemetry.metrics.bind_drift(lambda: [m.state for m in state.drift.values()])
    telemetry.metrics.bind_redteam(lambda: [t.state for t in state.redteam.values()])
    telemetry.metrics.bind_releases(
        lambda: (
            [] if state.pool is None else [(e.info.name, releases.release(e.info.name).state) for e in state.pool.all()]
        )
    )
    signals: list[signal.Signals] = []
    if stop_event is None:
        stop_event = asyncio.Event()

        def on_signal() -> None:
            if stop_event.is_set():
                log.warning("second stop signal: aborting in-flight requests now")
                state.admission.abort_all()
            stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
            signals.append(sig)

    server = build_server(settings.server, [security.interceptor])
    pb_grpc.add_InferenceServicer_to_server(InferenceServicer(state, telemetry), server)
    apb_grpc.add_AdminServicer_to_server(
        AdminServicer(
            state,
            telemetry,
            policy_file=settings.tenancy.policy_file,
            api_key_store=settings.auth.api_keys.file,
            revoke_key=revoke_api_key,
        ),
        server,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    pool: EnginePool | None = None
    kv_stats: Path | None = None
    watchdog: asyncio.Task[None] | None = None
    drift_tasks: list[asyncio.Future[None]] = []
    pruner: asyncio.Future[None] | None = None
    started = False
    try:
        try:
            if settings.server.reflection:
                _enable_reflection(server)
                log.warning("gRPC reflection is on: any client can list the API")
            address, description = bind(server, settings.server)
            if settings.observability.metrics_listen:
                telemetry.metrics.start_http(settings.observability.metrics_listen)
        except (ConfigError, OSError) as exc:
            log.error("cannot start: %s", _one_line(exc))
            return 1
        await health.set(NOT_SERVING)
        await server.start()
        started = True
        log.info("listening on %s (%s); health is NOT_SERVING until the engine is ready", address, description)
        log.info("try: bastion health --target %s ; bastion generate --target %s 'Hello'", address, address)
        if on_bound is not None:
            on_bound(address)

        try:
            if security.partition is not None and security.partition.source is not None:
                # The EngineCore (a child process) keys its prefix-cache blocks with the same secret and
                # runs the tenant-aware scheduler, which reports per-tenant KV figures into kv_stats.
                os.environ[block_hasher.ENV_KEY_FILE] = str(security.partition.source)
                kv_stats = Path(tempfile.mkdtemp(prefix="bastion-kv-stats-"))
                os.environ[ENV_STATS_DIR] = str(kv_stats)
                partition, guard = security.partition, security.guard
                stats = TenantKvStats(kv_stats, partition, lambda: guard.policy.tenants)
                telemetry.metrics.bind_tenant_kv(stats.rows)
            pool = await _load_pool(pool_factory, stop_event)
        except Exception as exc:
            log.error("engine pool failed to start: %s", _one_line(exc))
            log.debug("engine pool failure detail", exc_info=exc)
            return 1
        if pool is None:
            return 0
        state.pool = pool
        await asyncio.to_thread(releases.reload, [e.info for e in pool.all()])
        drift_tasks = _start_drift(settings, state, pool) + _start_redteam(settings, state, pool, redteam_baseline)
        watchdog = asyncio.ensure_future(health.follow(pool, watchdog_interval))
        if content is not None:
            pruner = asyncio.ensure_future(_prune_content(content, state))
        log.info("engine pool loaded: %s", ", ".join(f"{e.info.name} ({e.info.digest})" for e in pool.all()))

        await stop_event.wait()
        log.info("stop requested: health NOT_SERVING, draining")
        await _drain(health, state, settings.server.grace_period_s)
        return 0
    finally:
        if watchdog is not None:
            watchdog.cancel()
        for t in drift_tasks:
            t.cancel()
        if pruner is not None:
            pruner.cancel()
        if started:
            await health.shutting_down()
        state.admission.close()
        # Drained handlers have returned; their calls get FLUSH_S to send the final status, then
        # whatever is left (health watches, stragglers) is cancelled.
        await server.stop(FLUSH_S)
        telemetry.metrics.stop_http()
        if pool is not None:
            try:
                await pool.shutdown()
            except Exception as exc:  # noqa: BLE001 - shutdown goes on: the audit log must still close
                log.error("engine pool shutdown failed: %s", _one_line(exc))
        for sig in signals:
            loop.remove_signal_handler(sig)
        try:
            await security.audit.aclose()
        except Exception as exc:  # noqa: BLE001 - logged; the process is exiting either way
            log.error("closing the audit log failed: %s", _one_line(exc))
        if kv_stats is not None:
            shutil.rmtree(kv_stats, ignore_errors=True)
            os.environ.pop(ENV_STATS_DIR, None)
            os.environ.pop(block_hasher.ENV_KEY_FILE, None)
        if owns_telemetry:
            telemetry.shutdown()
        log.info("stopped")


def run_server(settings: Settings, pool_factory: PoolFactory) -> int:
    """Blocking entry point for ``bastion serve``: logging, the event loop, the exit code."""
    setup_logging(settings.observability.log_level)
    log.debug("settings: %s", settings.redacted())
    try:
        return asyncio.run(serve(settings, pool_factory))
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130
