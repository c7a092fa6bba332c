"""Builds the engine pool that `bastion serve` drives, from validated settings and the server's contract."""

from __future__ import annotations

import asyncio
import logging
import os

from bastion.config import Settings
from bastion.engine.process import EngineProcessEnv, SealedLoad
from bastion.engine.protocol import EnginePool
from bastion.engine.vllm import forkserver
from bastion.engine.vllm.device import cpu_engine_env, resolve_device
from bastion.engine.vllm.preload import preload_vllm
from bastion.errors import IntegrityError

log = logging.getLogger(__name__)


async def build_pool(settings: Settings, process: EngineProcessEnv) -> EnginePool:
    """Prepares the model (converting the default one on first use), stages the verified copy vLLM reads,
    then starts one vLLM engine.

    ``process`` is the server's part of the engine-process contract (isolation); a sealed model adds how
    the loading worker verifies and opens it, and the digests it must find (what the server reports)."""
    from bastion.models.resolve import prepare_model
    from bastion.models.verified import stage

    device = resolve_device(settings.model.device)
    core: forkserver.Forkserver | None = None
    if device == "cpu" and settings.model.preload_engine_core:
        os.environ.update(cpu_engine_env(settings.model, os.environ))  # before the forkserver inherits them
        # It imports vLLM's EngineCore modules in a process of its own while the model is verified below.
        core = forkserver.start(settings.model.tensor_parallel_size)
    preload = preload_vllm()  # beside the hashing and copying below, which release the GIL
    prepared = await asyncio.to_thread(prepare_model, settings)
    log.info(
        "starting the engine for %s (%s, %s) on %s",
        prepared.name,
        prepared.digest,
        "sealed" if prepared.sealed else "UNSEALED",
        device,
    )
    # vLLM reads the config, tokenizer, chat template and adapters only from this copy, made from the
    # verified bytes (bastion.models.verified); the engine removes it when it stops.
    verified = await asyncio.to_thread(stage, settings.cache_dir, prepared, settings.model.adapters)
    try:
        await asyncio.to_thread(preload.join)
        from bastion.engine.vllm.engine import VllmEngine

        if prepared.key is not None and prepared.trust_policy is not None:
            if prepared.header_digest is None:
                raise IntegrityError(f"{prepared.path}: sealed model prepared without its header digest")
            sealed = SealedLoad(
                trust_policy=prepared.trust_policy.resolve(),
                served_model=prepared.name,
                key_provider=prepared.key.worker_env(),
                model_dir=prepared.path,
                digest=prepared.digest,
                header_digest=prepared.header_digest,
                subject_digest=prepared.oms_digest or "",
            )
            process = process.model_copy(update={"sealed": sealed})
    except BaseException:
        verified.close()
        raise
    engine = await VllmEngine.start(
        settings,
        verified,
        prepared.name,
        prepared.digest,
        device,
        process=process,
        subject_digest=prepared.oms_digest or "",
        core=core,
    )
    return EnginePool([engine])
