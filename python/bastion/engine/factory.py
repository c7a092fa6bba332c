"""Builds the engine pool that `bastion serve` drives, from validated settings and the server's contract."""

from __future__ import annotations

import asyncio
import logging

from bastion.config import Settings
from bastion.engine.process import EngineProcessEnv, SealedLoad
from bastion.engine.protocol import EnginePool
from bastion.engine.vllm.device import resolve_device

log = logging.getLogger(__name__)


async def build_pool(settings: Settings, process: EngineProcessEnv) -> EnginePool:
    """Prepares the model (converting the default one on first use), then starts one vLLM engine.

    ``process`` is the server's part of the engine-process contract (isolation); a sealed model adds how
    the loading worker verifies and opens it."""
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

    if prepared.key is not None and prepared.trust_policy is not None:
        sealed = SealedLoad(
            trust_policy=prepared.trust_policy.resolve(),
            served_model=prepared.name,
            key_provider=prepared.key.worker_env(),
        )
        process = process.model_copy(update={"sealed": sealed})
    engine = await VllmEngine.start(
        settings,
        str(prepared.path),
        prepared.name,
        prepared.digest,
        device,
        process=process,
        subject_digest=prepared.oms_digest or "",
    )
    return EnginePool([engine])
