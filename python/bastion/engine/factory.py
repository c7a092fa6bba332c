"""Builds the engine pool that `bastion serve` drives, from validated settings."""

from __future__ import annotations

import asyncio
import logging

from bastion.config import Settings
from bastion.engine.protocol import EnginePool
from bastion.engine.vllm.device import resolve_device

log = logging.getLogger(__name__)


async def build_pool(settings: Settings) -> EnginePool:
    """Prepares the model (converting the default one on first use), then starts one vLLM engine."""
    from bastion.models.resolve import prepare_model

    device = resolve_device(settings.model.device)
    prepared = await asyncio.to_thread(prepare_model, settings)
    log.info(
        "starting the engine for %s (%s, %s) on %s",
        prepared.name,
        prepared.digest,
        "sealed" if prepared.sealed else "UNSEALED",
        device,
    )
    from bastion.engine.vllm.engine import VllmEngine

    sealed_env = prepared.worker_env() if prepared.sealed else None
    engine = await VllmEngine.start(
        settings,
        str(prepared.path),
        prepared.name,
        prepared.digest,
        device,
        sealed_env=sealed_env,
        subject_digest=prepared.oms_digest or "",
    )
    return EnginePool([engine])
