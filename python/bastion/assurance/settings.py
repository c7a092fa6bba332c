"""``[assurance]``: which models the server releases to tenants (the go-live gate, NIST AI 600-1 MS-2.6-001).

A model (and each adapter) is served to tenants only while a signed attestation for exactly its digest,
from a trusted evaluation key, with verdict PASSED on an accepted probe suite under a pinned gate policy,
is in ``attestations_dir`` (the rules: :mod:`bastion.assurance.release`). Without one the model is
*evaluation-only*: principals with the "evaluator" role (``bastion eval``) may call it, nobody else.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

#: ``"sha256:<hex>"`` of the bundled production gate policy (``bastion/assurance/data/gate/production.toml``,
#: what ``bastion eval`` gates with by default). A pin, not a computed value: changing that file means
#: changing this line, and tests/assurance/test_release.py fails until both agree.
PRODUCTION_GATE_POLICY_DIGEST = "sha256:cc26912b30bcd08f12631cc89b789e0503a1699e66870224cf4bb90cdcf5a46d"

PolicyDigest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]


class DriftSettings(BaseModel):
    """``[assurance.drift]``: teacher-forced log-prob canaries against the go-live baseline (SI-4)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    # Baselines, one per served model name (<name>.baseline.json, MACed). None: <cache_dir>/drift.
    dir: Path | None = None
    # The 32-byte secret (mode 0600 or 0400) the canaries and the baselines' MAC key are derived from
    # (HKDF-SHA256, one label each). None: <cache_dir>/keys/drift.key, created 0600 on first start; a
    # configured file must exist. Replacing it changes every canary: the baselines taken under the old one
    # no longer verify (an integrity alarm until an admin resets them: `bastion admin reset-drift-baseline`).
    seed_file: Path | None = None
    # Canaries per model (raw prompts and, of them, chat_canaries rendered with the model's chat template)
    # and the words one canary (prompt and continuation) has at most. Changing any of them changes the canary
    # set: a baseline taken on another set is an integrity alarm (reset it).
    canaries: int = Field(default=24, ge=4, le=256)
    chat_canaries: int = Field(default=12, ge=0, le=256)
    canary_words: int = Field(default=64, ge=48, le=512)
    # Seconds between checks (the first runs when the engine is ready); each costs `canaries` short prefills.
    interval_s: float = Field(default=3600.0, ge=10.0, le=7 * 86400.0)
    # Tolerance = max(tolerance_factor x the noise floor measured at start, min_tolerance) in nats per token.
    tolerance_factor: float = Field(default=5.0, ge=1.0, le=1000.0)
    min_tolerance: float = Field(default=1e-4, gt=0.0, le=10.0)
    # A confirmed drift (two checks in a row over tolerance), or a baseline that is missing, altered or not
    # the one the audit log records, quarantines the model: tenants are refused, across restarts, until an
    # admin lifts it (`bastion admin lift-quarantine`, audited). False: alert only.
    quarantine: bool = True

    @model_validator(mode="after")
    def _chat_within(self) -> DriftSettings:
        if self.chat_canaries > self.canaries:
            raise ValueError("assurance.drift.chat_canaries must be at most assurance.drift.canaries")
        return self


class RedTeamSettings(BaseModel):
    """``[assurance.redteam]``: continuous red-teaming inside the server (MS-2.7-007)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    # The suite whose probes rotate (production: 1322 probes; a full rotation at the default budget
    # takes about four days).
    profile: Literal["ci", "production"] = "production"
    # A batch every interval_s, at most max_probes_per_hour in any hour, one probe at a time. The first
    # min_probes_per_interval probes of a batch run whatever the tenant load, in an admission slot reserved
    # for the server's own probes (server.assurance_reserved_slots), so a tenant flood cannot starve the
    # red team; the rest of the batch only while tenant generations in flight are at most
    # max_tenant_inflight (0: only when idle). The minimum must fit the hourly budget (checked).
    interval_s: float = Field(default=300.0, ge=1.0, le=86400.0)
    batch_size: int = Field(default=4, ge=1, le=256)
    max_probes_per_hour: int = Field(default=16, ge=1, le=100000)
    min_probes_per_interval: int = Field(default=1, ge=0, le=256)
    max_tenant_inflight: int = Field(default=0, ge=0, le=65536)
    # summary.json of the go-live evaluation (bastion eval): the behavioural rates the findings are
    # compared with. None: findings are recorded and counted, rates are not tested.
    baseline: Path | None = None
    # Rates per family are tested (one-sided Fisher against the baseline, alpha) once a family has
    # window_probes new outcomes; two significant windows in a row confirm (two-stage).
    window_probes: int = Field(default=30, ge=5, le=100000)
    alpha: float = Field(default=0.01, gt=0.0, lt=0.5)
    # A confirmed regression quarantines the model (tenants refused until an admin lifts it); false: alert only.
    quarantine: bool = True

    @model_validator(mode="after")
    def _minimum_fits(self) -> RedTeamSettings:
        if self.min_probes_per_interval > self.batch_size:
            raise ValueError("assurance.redteam.min_probes_per_interval must be at most batch_size")
        batches = math.ceil(3600.0 / self.interval_s)
        if self.min_probes_per_interval * batches > self.max_probes_per_hour:
            raise ValueError(
                f"assurance.redteam.min_probes_per_interval x {batches} batches an hour is more than "
                "max_probes_per_hour: the minimum could not be kept"
            )
        return self


def _production_only() -> list[Literal["ci", "production"]]:
    return ["production"]


def _production_policy() -> list[str]:
    return [PRODUCTION_GATE_POLICY_DIGEST]


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
    accepted_suites: list[Literal["ci", "production"]] = Field(default_factory=_production_only, min_length=1)
    # Gate policies ("sha256:<hex>" of the TOML file, as GatePolicy.digest and the attestation record it) whose
    # verdicts count. An attestation gated by any other policy is refused (logged) and releases nothing: a
    # policy without limits passes anything. Default: the bundled production policy only.
    accepted_gate_policies: list[PolicyDigest] = Field(default_factory=_production_policy, min_length=1, max_length=64)
    drift: DriftSettings = DriftSettings()
    redteam: RedTeamSettings = RedTeamSettings()
