"""What a Serve replica is told to build: :class:`ReplicaSpec`, serialised once by Ray.

Ray ships a deployment's constructor arguments through its object store and keeps them in the controller's
state, readable by every token holder (docs/cluster.md). So the spec holds names, numbers and absolute file
paths only, never a secret: every text field is checked with the same heuristic as ``[cluster]
replica_env`` (``bastion.cluster.settings.looks_like_secret``) and refused when it looks like key material.
A replica that needs a secret (a sealed model's key, the block-hashing key) reads it on its own node from a
path its own configuration names — a later part of issue 16.

This module imports no Ray: the front door validates a spec before it connects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.cluster.settings import looks_like_secret

EngineKind = Literal["fake", "vllm"]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class FakeEngineSpec(BaseModel):
    """Options of ``testkit.fakes.FakeEngine`` (tests and benchmarks only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_context: int = Field(default=256, ge=1, le=1_000_000)
    token_delay: float = Field(default=0.0, ge=0.0, le=60.0)
    hang_after: int | None = Field(default=None, ge=0)
    die_after: int | None = Field(default=None, ge=0)
    # What the replica reports at join (tests of admission): another digest, no isolation proof.
    digest: str | None = Field(default=None, pattern=r"^blake3:[0-9a-f]{64}$")
    isolation_proof: bool = True


class ReplicaSpec(BaseModel):
    """One served model's replica: which engine to build and from what (names and paths only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: EngineKind
    model: str = Field(description="the served model name (ModelInfo.name); also names the Serve application")
    # The replica node's own bastion configuration (its [model] and key provider): read there, never shipped.
    config_file: Path | None = None
    fake: FakeEngineSpec | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError("replica.model: 1-128 of A-Z a-z 0-9 . _ : - (a served model name)")
        if looks_like_secret(v):
            raise ValueError("replica.model: looks like key material; a replica spec carries names and paths only")
        return v

    @field_validator("config_file")
    @classmethod
    def _config_file(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        if not v.is_absolute():
            raise ValueError("replica.config_file: an absolute path (replicas run in other directories)")
        if looks_like_secret(str(v)) or not str(v).isprintable():
            raise ValueError("replica.config_file: a file path, not key material")
        return v

    @model_validator(mode="after")
    def _fake_only_for_fake(self) -> ReplicaSpec:
        if self.engine != "fake" and self.fake is not None:
            raise ValueError("replica.fake: only with engine = 'fake'")
        return self

    @property
    def fake_options(self) -> FakeEngineSpec:
        return self.fake or FakeEngineSpec()

    @property
    def app_name(self) -> str:
        """The Serve application of this model: bastion's own namespace of names."""
        return f"bastion-{self.model}"
