"""``[assurance]``: which models the server releases to tenants (the go-live gate, NIST AI 600-1 MS-2.6-001).

A model (and each adapter) is served to tenants only while a signed attestation for exactly its digest,
from a trusted evaluation key, with verdict PASSED on an accepted probe suite under a pinned gate policy,
is in ``attestations_dir`` (the rules: :mod:`bastion.assurance.release`). Without one the model is
*evaluation-only*: principals with the "evaluator" role (``bastion eval``) may call it, nobody else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: ``"sha256:<hex>"`` of the bundled production gate policy (``bastion/assurance/data/gate/production.toml``,
#: what ``bastion eval`` gates with by default). A pin, not a computed value: changing that file means
#: changing this line, and tests/assurance/test_release.py fails until both agree.
PRODUCTION_GATE_POLICY_DIGEST = "sha256:cc26912b30bcd08f12631cc89b789e0503a1699e66870224cf4bb90cdcf5a46d"

PolicyDigest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]


class DriftSettings(BaseModel):
    """``[assurance.drift]``: teacher-forced log-prob canaries against the go-live baseline (SI-4)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    # Baselines, one per served model name (<name>.baseline.json). None: <cache_dir>/drift.
    dir: Path | None = None
    # Seconds between checks (the first runs when the engine is ready); each costs ~20 short prefills.
    interval_s: float = Field(default=3600.0, ge=10.0, le=7 * 86400.0)
    # Tolerance = max(tolerance_factor x the noise floor measured at start, min_tolerance) in nats per token.
    tolerance_factor: float = Field(default=5.0, ge=1.0, le=1000.0)
    min_tolerance: float = Field(default=1e-4, gt=0.0, le=10.0)
    # A confirmed drift (two checks in a row over tolerance) quarantines the model: tenants are refused,
    # across restarts, until an admin lifts it (`bastion admin lift-quarantine`, audited). False: alert only.
    quarantine: bool = True


class RedTeamSettings(BaseModel):
    """``[assurance.redteam]``: continuous red-teaming inside the server (MS-2.7-007)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    # The suite whose probes rotate (production: 1322 probes; a full rotation at the default budget
    # takes about four days).
    profile: Literal["ci", "production"] = "production"
    # A batch every interval_s, at most max_probes_per_hour in any hour, one probe at a time, and only
    # while tenant generations in flight are at most max_tenant_inflight (0: only when idle), so tenant
    # traffic is never queued behind it.
    interval_s: float = Field(default=300.0, ge=1.0, le=86400.0)
    batch_size: int = Field(default=4, ge=1, le=256)
    max_probes_per_hour: int = Field(default=16, ge=1, le=100000)
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
