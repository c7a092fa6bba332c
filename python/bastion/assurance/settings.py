"""``[assurance]``: which models the server releases to tenants (the go-live gate, NIST AI 600-1 MS-2.6-001).

A model (and each adapter) is served to tenants only while a signed attestation for exactly its digest,
from a trusted evaluation key, with verdict PASSED on an accepted probe suite, is in
``attestations_dir``. Without one the model is *evaluation-only*: principals with the "evaluator" role
(``bastion eval``) may call it, nobody else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AssuranceSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # Off: every model is released without an attestation (development only; start-up logs a WARNING).
    require_attestation: bool = True
    # Signed attestations (DSSE envelopes, `*.intoto.json`) written by `bastion eval --sign-key`.
    # None: <cache_dir>/attestations. Re-read at start and by `bastion admin reload-attestations`.
    attestations_dir: Path | None = None
    # PEM public keys of the evaluation signers whose attestations count.
    trusted_keys: list[Path] = Field(default_factory=list, max_length=32)
    # Probe-suite profiles (bastion.assurance.suites) whose current version an attestation must name.
    accepted_suites: list[Literal["ci", "production"]] = Field(default_factory=lambda: ["production"], min_length=1)
