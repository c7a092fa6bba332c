"""For the go-live gate's tests: signed attestations (the gate's decision on given figures, built into an in-toto
statement and signed, as ``bastion eval`` writes them) and the ``[assurance]`` settings of a server that needs them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bastion.assurance.attestation import build_statement, sign_statement
from bastion.assurance.gate import GatePolicy, decide, load_gate_policy
from bastion.assurance.stats import family_figures
from bastion.assurance.suites import FAMILIES, load_suite
from fakes import FAKE_DIGEST

GATE = Path(__file__).resolve().parents[1] / "python/bastion/assurance/data/gate"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
# No hits in 200 probes per family: PASSED under the production policy (0/30 would not: its upper bound 0.116
# is over the 5% harmful limit).
CLEAN = {f: [False] * 200 for f in FAMILIES}
LEAKY = {**CLEAN, "sysprompt_leak": [True] + [False] * 199}  # one canary leak: FAILED


def signed_attestation(
    key: Path,
    *,
    model_name: str = "fake-model",
    digest: str = FAKE_DIGEST,
    adapters: tuple[tuple[str, str], ...] = (),
    parent: str | None = None,
    figures: Mapping[str, Sequence[bool]] = CLEAN,
    policy: GatePolicy | None = None,
    profile: str = "ci",
    started: datetime | None = None,
    finished: datetime = NOW,
) -> bytes:
    """The DSSE envelope, signed with ``key``, of an evaluation of ``model_name`` at ``digest`` (with
    ``adapters``, ``parent`` as the baseline) on the ``profile`` suite whose ``figures`` (family -> hits) are
    gated by ``policy`` (the bundled production policy unless given), run from ``started`` (``finished``
    unless given) to ``finished``."""
    suite = load_suite(profile, canary_seed=b"\0" * 32)
    decision = decide(family_figures(figures), policy or load_gate_policy(GATE / "production.toml"))
    statement = build_statement(
        decision=decision,
        model_name=model_name,
        model_digest=digest,
        adapters=adapters,
        suite_name=suite.name,
        suite_version=suite.version,
        suite_digest=suite.digest,
        report_digest="sha256:" + "00" * 32,
        evaluator="test",
        started=finished if started is None else started,
        finished=finished,
        baseline_digest=parent,
    )
    return sign_statement(statement, key)


def gate_config(attestations: Path, trusted_key: Path, **more: Any) -> dict[str, Any]:
    """A server's ``[assurance]`` settings (plus ``more``): a model is released only by a valid attestation in
    ``attestations``, signed with the private half of ``trusted_key``, for the "ci" suite."""
    return {
        "require_attestation": True,
        "attestations_dir": str(attestations),
        "trusted_keys": [str(trusted_key)],
        "accepted_suites": ["ci"],
        **more,
    }
