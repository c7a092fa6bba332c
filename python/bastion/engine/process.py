"""The contract between the server and vLLM's processes (the EngineCore and its workers).

vLLM starts those processes itself; the only channel bastion has into them is the environment they
inherit. So the server builds one typed ``EngineProcessEnv`` explicitly, the engine hands it to vLLM as
one variable (``BASTION_ENGINE_PROCESS``, JSON) right before the engine starts, and code inside vLLM's
processes reads it once with :func:`current`. It holds paths and names only, never a secret: key material
stays in files (or the key provider's service) that the paths name. The key provider's references are the
provider's own serialisation (``KeyProvider.worker_env()``), carried here and read back with
``bastion.keys.provider_from_env``.

What each field switches on inside vLLM's processes:

- ``partition_key_file``: tenant isolation. The EngineCore keys prefix-cache blocks with the key derived
  from this secret (``bastion.engine.vllm.block_hasher``) and runs the tenant KV scheduler.
- ``stats_dir``: where the EngineCore's scheduler writes the engine's figures (running, waiting, KV usage and,
  under isolation, per tenant) for the server's metrics (``bastion.engine.vllm.figures``).
- ``sealed``: the model is sealed; the ``bastion`` load format opens ``model_dir`` (vLLM's own model path is
  the verified copy of ``bastion.models.verified``, which holds no weights), verifies it against
  ``trust_policy`` for ``served_model``, opens it with ``key_provider``, and refuses to decrypt anything
  unless what it verified is what the server attested: the ``weights.ctxh`` bytes it decoded hash to
  ``header_digest`` (the entry of ``digest``, the directory digest ListModels and the audit report) and the
  signature's OMS subject digest is ``subject_digest`` ("" for an unsigned model).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bastion.errors import ConfigError

ENV_VAR = "BASTION_ENGINE_PROCESS"
# The key provider's references (``bastion.keys``) are BASTION_ variables of its own making.
_KEY_REF_PREFIX = "BASTION_"


class SealedLoad(BaseModel):
    """How the worker that owns the weights verifies and opens a sealed model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trust_policy: Path
    served_model: str
    key_provider: dict[str, str]
    # The sealed directory the loader reads (not vLLM's model path: that is the verified copy).
    model_dir: Path
    # What the server attested (ListModels, the release gate, the audit): the directory digest, the
    # "blake3:<hex>" of the weights.ctxh bytes in it, and the OMS subject digest ("" when unsigned).
    digest: str = Field(pattern=r"^blake3:[0-9a-f]{64}$")
    header_digest: str = Field(pattern=r"^blake3:[0-9a-f]{64}$")
    subject_digest: str = Field(pattern=r"^(sha256:[0-9a-f]{64})?$")

    @field_validator("key_provider")
    @classmethod
    def _references_only(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in value if not k.startswith(_KEY_REF_PREFIX))
        if bad:
            raise ValueError(f"key_provider names must start with {_KEY_REF_PREFIX}: {bad}")
        return value


class EngineProcessEnv(BaseModel):
    """Everything bastion's code inside vLLM's processes needs from the server: paths and names only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    partition_key_file: Path | None = None
    stats_dir: Path | None = None
    sealed: SealedLoad | None = None

    @property
    def isolation(self) -> bool:
        return self.partition_key_file is not None

    def to_env(self) -> dict[str, str]:
        return {ENV_VAR: self.model_dump_json(exclude_none=True)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EngineProcessEnv:
        """The contract in ``env``; an empty one (everything off) when the server set none."""
        raw = env.get(ENV_VAR)
        if not raw:
            return cls()
        try:
            contract = cls.model_validate_json(raw)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(root)" for e in exc.errors())
            raise ConfigError(f"{ENV_VAR} is not a valid engine-process contract (fields: {fields})") from None
        if contract.version != 1:
            raise ConfigError(f"{ENV_VAR}: version {contract.version} is not supported (this build reads 1)")
        return contract


def current() -> EngineProcessEnv:
    """This process's contract (read where a hook is installed or built, not per request). Not cached: with
    vLLM's in-process EngineCore (fast start) this is the server's process, which sets it before the start."""
    return EngineProcessEnv.from_env(os.environ)
