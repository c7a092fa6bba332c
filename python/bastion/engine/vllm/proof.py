"""The isolation proof from inside vLLM's processes (``bastion.isolation.proof.IsolationProof``).

:func:`install` runs from the bastion vLLM plugin in every vLLM process and adds two methods to vLLM's
classes: ``EngineCore.bastion_isolation_proof`` (a utility the front end calls over vLLM's own EngineCore
channel: is the plugin registered there, is the EngineCore's ``request_block_hasher`` bastion's keyed
hasher, is its scheduler the tenant scheduler; and, through the executor's ``collective_rpc``, is the plugin
registered in every worker) and ``WorkerBase.bastion_plugin_registered``. A process where the plugin never
ran lacks the method: the call fails, and nothing is proven.

:func:`prove` is the front end's side: it never raises; anything that goes wrong proves nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bastion.isolation.proof import IsolationProof

log = logging.getLogger(__name__)

PROOF_METHOD = "bastion_isolation_proof"
WORKER_METHOD = "bastion_plugin_registered"
PROOF_TIMEOUT_S = 60.0


def is_keyed_hasher(hasher: Any) -> bool:
    """Whether ``hasher`` is one ``bastion.engine.vllm.block_hasher.make_request_block_hasher`` built."""
    return getattr(hasher, "bastion_keyed", False) is True


def core_proof(core: Any) -> dict[str, bool]:
    """Runs inside the EngineCore (``core`` is the ``EngineCore``)."""
    from bastion.engine.vllm.plugin import is_registered
    from bastion.engine.vllm.scheduler import TenantScheduler

    workers = core.collective_rpc(WORKER_METHOD)
    return {
        "plugin": is_registered() and bool(workers) and all(w is True for w in workers),
        "block_hasher": is_keyed_hasher(getattr(core, "request_block_hasher", None)),
        "tenant_scheduler": isinstance(getattr(core, "scheduler", None), TenantScheduler),
    }


def worker_registered(worker: Any) -> bool:
    """Runs inside a worker."""
    from bastion.engine.vllm.plugin import is_registered

    return is_registered()


def install() -> None:
    from vllm.v1.engine.core import EngineCore
    from vllm.v1.worker.worker_base import WorkerBase

    setattr(EngineCore, PROOF_METHOD, core_proof)  # methods added to vLLM's classes
    setattr(WorkerBase, WORKER_METHOD, worker_registered)


async def prove(llm: Any, timeout: float = PROOF_TIMEOUT_S) -> IsolationProof:
    """Asks ``llm``'s (an ``AsyncLLM``) EngineCore; an engine that cannot answer proves nothing."""
    try:
        raw = await asyncio.wait_for(llm.engine_core.call_utility_async(PROOF_METHOD), timeout)
    except Exception as exc:  # noqa: BLE001 - no answer is no proof; the caller decides what that means
        log.error("the engine gave no isolation proof: %s", type(exc).__name__)
        return IsolationProof()
    if not isinstance(raw, dict):
        return IsolationProof()
    return IsolationProof(**{name: raw.get(name) is True for name in IsolationProof.model_fields})
