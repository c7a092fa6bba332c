"""The server's background tasks once the pool serves: drift monitors, red-team schedulers, content pruning."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bastion.assurance.canaries import DriftSecret
from bastion.assurance.drift import BaselineLedger, DriftMonitor
from bastion.audit.content import PRUNE_EVERY_S, ContentStore
from bastion.config import Settings
from bastion.engine.protocol import EnginePool
from bastion.server.servicer import ServerState

log = logging.getLogger(__name__)


def start_drift(
    settings: Settings, state: ServerState, pool: EnginePool, secret: DriftSecret | None, ledger: BaselineLedger
) -> list[asyncio.Future[None]]:
    """A drift monitor per engine (bastion.assurance.drift): every engine scores prompt log-probs on the
    canaries drawn from ``secret``; ``ledger``: the baselines the audit log records (read at start)."""
    if not settings.assurance.drift.enabled or secret is None:
        return []

    async def on_event(event: str, model: str, digest: str, reason: str, action: str) -> None:
        await state.recorder.alert(event=event, model=model, model_digest=digest, reason=reason, action=action)

    tasks: list[asyncio.Future[None]] = []
    for engine in pool.all():
        monitor = DriftMonitor(
            settings.assurance.drift, settings.cache_dir, engine, state.releases, on_event, secret, ledger
        )
        state.drift[engine.info.name] = monitor
        tasks.append(asyncio.ensure_future(monitor.run()))
    return tasks


def redteam_baseline(settings: Settings) -> dict[str, Any] | None:
    """The accepted red-team summary; ConfigError naming the file when it does not load (a start failure)."""
    rt = settings.assurance.redteam
    if not rt.enabled or rt.baseline is None:
        return None
    from bastion.assurance.report import load_summary

    return load_summary(rt.baseline)


def start_redteam(
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
            settings.assurance.redteam,
            engine,
            state.releases,
            lambda: state.admission.inflight,
            on_event,
            baseline,
            reserve=state.admission.internal,
        )
        state.redteam[engine.info.name] = team
        tasks.append(asyncio.ensure_future(team.run()))
    return tasks


async def prune_content(content: ContentStore, state: ServerState) -> None:
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
