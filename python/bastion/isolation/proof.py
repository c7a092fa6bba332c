"""What an engine proves about tenant isolation from inside its own processes (:class:`IsolationProof`).

The bastion vLLM plugin and the keyed block hasher are installed by code that runs in vLLM's EngineCore and
worker processes, where a failure is only logged (a plugin that fails to import) or silent (the hasher stays
vLLM's own without its key file). So the server does not take isolation on trust: the engine asks its
EngineCore, which asks its workers (``bastion.engine.vllm.proof``), and the answer decides whether the
engine may serve (``bastion serve``) or a Serve replica may get traffic (``bastion.cluster.admission``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class IsolationProof(BaseModel):
    """What the engine found installed in its own processes (EngineCore and workers for vLLM)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plugin: bool = False  # bastion's vLLM plugin registered in the EngineCore and in every worker
    block_hasher: bool = False  # the EngineCore's prefix-cache block hasher is bastion's keyed one
    tenant_scheduler: bool = False  # the EngineCore's scheduler is the tenant KV scheduler

    def missing(self) -> list[str]:
        return [name for name, ok in self.model_dump().items() if not ok]
