"""The go-live gate inside the server: which served models (and adapters) tenants may call.

A model is *released* while ``assurance.attestations_dir`` holds an attestation that
  - verifies (DSSE signature by one of ``assurance.trusted_keys``; :mod:`bastion.assurance.attestation`),
  - has verdict PASSED,
  - names the current version (digest) of an accepted probe suite (``assurance.accepted_suites``), and
  - has a subject whose digest set matches the model's exactly: every algorithm the two share has the
    same value, and they share at least one (``blake3`` of the directory served, ``sha256`` OMS digest).
An adapter is released for a model only by an attestation whose subjects cover both the model and the
adapter's directory digest and whose baseline is that model (``bastion eval --adapter --parent``: the
adapted model compared with its parent probe by probe, McNemar): a fine-tune is a new artefact and needs
its own evaluation (MS-2.7-008).

Otherwise the model is *evaluation-only*: principals with the "evaluator" role may call it (that is how
``bastion eval`` produces the attestation), everybody else gets FAILED_PRECONDITION. A model can also be
*quarantined* (drift or a red-team finding, by policy): then nobody but evaluators may call it, whatever
attestation exists, until the server restarts with a new attestation or an operator reloads.

Attestations are read at start and on ``Admin.ReloadAttestations``; a file that fails verification is
logged (file name and reason, never contents) and ignored, so it can never release anything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bastion.assurance.attestation import MAX_ENVELOPE_BYTES, Attestation, digests_match, verify_attestation
from bastion.assurance.settings import AssuranceSettings
from bastion.engine.protocol import ModelInfo
from bastion.errors import BastionError, FailedPrecondition, IntegrityError

log = logging.getLogger(__name__)

RELEASED = "released"
EVALUATION_ONLY = "evaluation_only"
QUARANTINED = "quarantined"
ATTESTATION_SUFFIX = ".intoto.json"
MAX_FILES = 4096


class NotReleased(FailedPrecondition):
    """The model is not released to tenants (no valid attestation, or quarantined)."""

    public_default = "the model is not released: it has no valid security attestation (evaluation only)"


@dataclass(frozen=True, slots=True)
class Release:
    state: str  # RELEASED / EVALUATION_ONLY / QUARANTINED
    attestation: str  # what is in force ("<suite>@<version> PASSED signed by <keyid>") or why nothing is


def _covers(att: Attestation, digest_set: Mapping[str, str]) -> bool:
    return att.covers(None, digest_set)


def _parent_is(att: Attestation, digest_set: Mapping[str, str]) -> bool:
    """The attestation's baseline (the parent an adapter was compared with) is this model."""
    baseline = att.statement["predicate"]["bastion"].get("baseline")
    return isinstance(baseline, dict) and digests_match(baseline, digest_set)


class ReleaseBook:
    """Per model name: its release state. Thread-safe; reload swaps the whole table at once."""

    def __init__(self, settings: AssuranceSettings, cache_dir: Path) -> None:
        self.settings = settings
        self.dir = settings.attestations_dir or cache_dir / "attestations"
        self._lock = threading.Lock()
        self._models: dict[str, Release] = {}
        self._adapters: dict[tuple[str, str], Release] = {}
        self._quarantine: dict[str, str] = {}
        self._accepted: dict[str, str] = {}  # suite digest -> "name@version"
        if settings.require_attestation:
            from bastion.assurance.suites import load_suite

            for profile in settings.accepted_suites:
                suite = load_suite(profile, canary_seed=b"\0" * 32)
                self._accepted[suite.digest] = f"{suite.name}@{suite.version}"

    @property
    def enforced(self) -> bool:
        return self.settings.require_attestation

    def _read(self) -> tuple[list[Attestation], int, int]:
        if not self.dir.is_dir():
            return [], 0, 0
        files = sorted(p for p in self.dir.iterdir() if p.name.endswith(ATTESTATION_SUFFIX))[:MAX_FILES]
        good: list[Attestation] = []
        rejected = 0
        for path in files:
            try:
                if path.stat().st_size > MAX_ENVELOPE_BYTES:  # verify_attestation refuses it too; never read it all
                    raise IntegrityError(f"over {MAX_ENVELOPE_BYTES} bytes")
                good.append(verify_attestation(path.read_bytes(), self.settings.trusted_keys))
            except (IntegrityError, OSError) as exc:
                rejected += 1
                reason = exc.detail or exc.public_message if isinstance(exc, BastionError) else type(exc).__name__
                log.warning("attestation %s refused: %s", path.name, reason)
        return good, len(files), rejected

    def _decide(self, atts: list[Attestation], digest_set: Mapping[str, str], what: str) -> Release:
        reasons = []
        newest_first = sorted(
            atts, key=lambda a: str(a.statement["predicate"]["bastion"].get("finished", "")), reverse=True
        )
        for att in newest_first:
            if not _covers(att, digest_set):
                continue
            suite = self._accepted.get(att.suite_digest)
            if suite is None:
                reasons.append(f"suite {att.suite_name}@{att.suite_version} is not accepted")
                continue
            if att.result != "PASSED":
                reasons.append(f"{suite} verdict {att.result}")
                continue
            return Release(RELEASED, f"{suite} PASSED signed by {att.signer_keyid[:16]}")
        why = "; ".join(dict.fromkeys(reasons)) or f"no attestation for this {what} digest"
        return Release(EVALUATION_ONLY, why)

    def reload(self, models: Iterable[ModelInfo]) -> tuple[int, int]:
        """Re-reads the attestations; returns (files read, files rejected)."""
        models = list(models)
        if not self.enforced:
            table = {m.name: Release(RELEASED, "not required (assurance.require_attestation = false)") for m in models}
            adapters = {(m.name, a): table[m.name] for m in models for a, _ in m.adapter_digests}
            files = rejected = 0
        else:
            atts, files, rejected = self._read()
            table, adapters = {}, {}
            for m in models:
                table[m.name] = self._decide(atts, m.digest_set(), "model")
                for name, digest in m.adapter_digests:
                    algo, value = digest.split(":", 1)
                    # Evaluated with this model, and compared with it (its parent) probe by probe.
                    covering = [a for a in atts if _covers(a, m.digest_set()) and _parent_is(a, m.digest_set())]
                    adapters[(m.name, name)] = self._decide(
                        covering, {algo: value}, "adapter (compared with its parent)"
                    )
        with self._lock:
            self._models, self._adapters = table, adapters
        for name, rel in table.items():
            (log.info if rel.state == RELEASED else log.warning)("model %s: %s (%s)", name, rel.state, rel.attestation)
        return files, rejected

    def quarantine(self, model: str, reason: str) -> None:
        with self._lock:
            self._quarantine[model] = reason
        log.error("model %s QUARANTINED: %s", model, reason)

    def release(self, model: str) -> Release:
        with self._lock:
            if model in self._quarantine:
                return Release(QUARANTINED, self._quarantine[model])
            return self._models.get(model, Release(EVALUATION_ONLY, "attestations not read yet"))

    def adapter_release(self, model: str, adapter: str) -> Release:
        base = self.release(model)
        if base.state == QUARANTINED or not self.enforced:
            return base
        with self._lock:
            return self._adapters.get((model, adapter), Release(EVALUATION_ONLY, "no attestation for this adapter"))

    def check(self, roles: frozenset[str], model: str, adapter: str | None) -> None:
        """Raises NotReleased unless the caller may use this model (and adapter) now."""
        if "evaluator" in roles:
            return
        rel = self.release(model) if adapter is None else self.adapter_release(model, adapter)
        if rel.state == QUARANTINED:
            raise NotReleased(f"quarantined: {rel.attestation}", public="the model is quarantined")
        if rel.state != RELEASED:
            raise NotReleased(f"{'adapter ' + adapter if adapter else 'model'} not released: {rel.attestation}")
