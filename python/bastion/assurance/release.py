"""The go-live gate inside the server: which served models (and adapters) tenants may call.

**Which attestations count.** ``assurance.attestations_dir`` is read at start and on
``Admin.ReloadAttestations``. Each ``*.intoto.json`` file is opened ``O_RDONLY|O_NOFOLLOW|O_NONBLOCK|
O_CLOEXEC``, must be a regular file (``fstat`` of the open descriptor) and is read up to
``MAX_ENVELOPE_BYTES`` (:func:`bastion.files.read_regular`): a symlink, a FIFO, a device or an oversized
file is refused at once, never followed, waited on or read without end. Then it must verify (DSSE signature
by one of ``assurance.trusted_keys``, :mod:`bastion.assurance.attestation`) and name a gate policy the server
pins (``assurance.accepted_gate_policies``, by default only the bundled production policy: the policy's
digest is in the attestation, and a policy without limits passes anything). A refused file is logged (file
name and reason, never contents), counted, and can never release or withdraw anything.

**Which subjects count.** Every subject carries ``bastion.kind`` (``model`` / ``adapter``).
  - A *model* is decided by the attestations whose subjects are all of kind ``model`` (none names an
    adapter: an evaluation of model + adapter, ``bastion eval --adapter --parent``, evaluated the adapted
    model, not the bare one) and whose model subject's digest set matches the model's: every algorithm the
    two share has the same value, and they share at least one (``blake3`` of the directory served,
    ``sha256`` OMS digest).
  - An *adapter* is decided by the attestations with a model subject matching the model, an adapter subject
    matching the adapter's directory digest, and the model as baseline (the adapted model compared with its
    parent probe by probe, McNemar): a fine-tune is a new artefact and needs its own evaluation (MS-2.7-008).

**Which verdict counts.** Among those, only suites the server accepts (``assurance.accepted_suites``, their
current version's digest) count, and per (digest, suite) the *newest* verdict decides, by the signed
``finished`` time: a FAILED re-evaluation withdraws an older PASSED one, a later PASSED one releases again.
Equal times with different verdicts fail closed (any verdict but PASSED wins). It is *released* when the
newest verdict of every accepted suite that has one is PASSED.

Otherwise the model is *evaluation-only*: principals with the "evaluator" role may call it (that is how
``bastion eval`` produces the attestation), everybody else gets FAILED_PRECONDITION.

**Quarantine.** A model can also be *quarantined* (a confirmed drift or red-team regression, or a drift
baseline integrity alarm, by policy):
then nobody but evaluators may call it, whatever attestation exists. The decision is first written to the
audit log (a ``decision`` record with ``decision`` = ``quarantine``, ``bastion.server.audit_recorder``), and
that log is the only store: at start :meth:`ReleaseBook.restore_quarantines` re-derives the quarantined set
from it (a model's last ``quarantine`` / ``quarantine_lifted`` record decides), so a quarantine survives a
restart and no file in the attestations directory (added or deleted) lifts it. Only
``Admin.LiftQuarantine`` (the admin role; ``bastion admin lift-quarantine``) lifts one, and it writes its
``quarantine_lifted`` record, with the principal and the reason, before the state changes. A log that cannot
be read back whole refuses the start (fail closed) instead of forgetting a quarantine.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bastion.assurance.attestation import (
    ADAPTER_KIND,
    MAX_ENVELOPE_BYTES,
    MODEL_KIND,
    Attestation,
    digests_match,
    verify_attestation,
)
from bastion.assurance.settings import AssuranceSettings
from bastion.audit.records import iter_records
from bastion.engine.protocol import ModelInfo
from bastion.errors import BastionError, FailedPrecondition, IntegrityError
from bastion.files import read_regular

log = logging.getLogger(__name__)
_T = TypeVar("_T")

RELEASED = "released"
EVALUATION_ONLY = "evaluation_only"
QUARANTINED = "quarantined"
ATTESTATION_SUFFIX = ".intoto.json"
MAX_FILES = 4096
# The audit records' ``decision`` values that put a model in quarantine and take it out (kind "decision").
QUARANTINE = "quarantine"
QUARANTINE_LIFTED = "quarantine_lifted"
# The principal of the server's own assurance decisions (alerts, quarantines, drift baselines).
ASSURANCE_PRINCIPAL = "bastion:assurance"


class NotReleased(FailedPrecondition):
    """The model is not released to tenants (no valid attestation, or quarantined)."""

    public_default = "the model is not released: it has no valid security attestation (evaluation only)"


@dataclass(frozen=True, slots=True)
class Release:
    state: str  # RELEASED / EVALUATION_ONLY / QUARANTINED
    attestation: str  # what is in force ("<suite>@<version> PASSED signed by <keyid>") or why nothing is


def _releases_model(att: Attestation, digest_set: Mapping[str, str]) -> bool:
    """An evaluation of this bare model: only model subjects (no adapter), one of them this model."""
    return att.only_models and att.covers_kind(MODEL_KIND, digest_set)


def _parent_is(att: Attestation, digest_set: Mapping[str, str]) -> bool:
    """The attestation's baseline (the parent an adapter was compared with) is this model."""
    baseline = att.statement["predicate"]["bastion"].get("baseline")
    return isinstance(baseline, dict) and digests_match(baseline, digest_set)


def _why(exc: Exception) -> str:
    """A refused file's reason, one line, never its contents."""
    if isinstance(exc, BastionError):
        return exc.detail or exc.public_message
    if isinstance(exc, OSError):
        if exc.errno == errno.ELOOP:
            return "a symbolic link (not followed)"
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def _newest(atts: list[Attestation]) -> Attestation:
    """The newest verdict by signed time; of equal times, one that is not PASSED (fail closed)."""
    return max(atts, key=lambda a: (a.finished, a.result != "PASSED"))


class ReleaseBook:
    """Per model name: its release state. Thread-safe; reload swaps the whole table at once."""

    def __init__(self, settings: AssuranceSettings, cache_dir: Path) -> None:
        self.settings = settings
        self.dir = settings.attestations_dir or cache_dir / "attestations"
        self._lock = threading.Lock()
        # One quarantine decision at a time, recorded then applied (decide()).
        self._decisions = asyncio.Lock()
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

    def _read_one(self, path: Path) -> Attestation:
        att = verify_attestation(read_regular(path, MAX_ENVELOPE_BYTES), self.settings.trusted_keys)
        if att.policy_digest not in self.settings.accepted_gate_policies:
            raise IntegrityError(f"gate policy {att.policy_digest} is not pinned (assurance.accepted_gate_policies)")
        return att

    def _read(self) -> tuple[list[Attestation], int, int]:
        if not self.dir.is_dir():
            return [], 0, 0
        files = sorted(p for p in self.dir.iterdir() if p.name.endswith(ATTESTATION_SUFFIX))[:MAX_FILES]
        good: list[Attestation] = []
        rejected = 0
        for path in files:
            try:
                good.append(self._read_one(path))
            except (IntegrityError, OSError) as exc:
                rejected += 1
                log.warning("attestation %s refused: %s", path.name, _why(exc))
        return good, len(files), rejected

    def _decide(self, atts: list[Attestation], what: str) -> Release:
        """``atts``: the attestations of this artefact (the caller matched the subjects); see the module."""
        reasons = []
        by_suite: dict[str, list[Attestation]] = {}
        for att in atts:
            if att.suite_digest in self._accepted:
                by_suite.setdefault(att.suite_digest, []).append(att)
            else:
                reasons.append(f"suite {att.suite_name}@{att.suite_version} is not accepted")
        verdicts = {self._accepted[digest]: _newest(group) for digest, group in sorted(by_suite.items())}
        failing = {suite: att for suite, att in verdicts.items() if att.result != "PASSED"}
        if verdicts and not failing:
            suite, att = max(verdicts.items(), key=lambda kv: kv[1].finished)
            return Release(RELEASED, f"{suite} PASSED signed by {att.signer_keyid[:16]}")
        reasons = [f"{suite} verdict {att.result} (newest, {att.finished})" for suite, att in failing.items()] + reasons
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
                model = m.digest_set()
                table[m.name] = self._decide([a for a in atts if _releases_model(a, model)], "model")
                # Evaluated with this model, and compared with it (its parent) probe by probe.
                paired = [a for a in atts if a.covers_kind(MODEL_KIND, model) and _parent_is(a, model)]
                for name, digest in m.adapter_digests:
                    algo, value = digest.split(":", 1)
                    adapters[(m.name, name)] = self._decide(
                        [a for a in paired if a.covers_kind(ADAPTER_KIND, {algo: value})],
                        "adapter (compared with its parent)",
                    )
        with self._lock:
            self._models, self._adapters = table, adapters
        for name, rel in table.items():
            (log.info if rel.state == RELEASED else log.warning)("model %s: %s (%s)", name, rel.state, rel.attestation)
        return files, rejected

    async def decide(self, step: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``step`` — record a quarantine decision (``quarantine``, ``quarantine_lifted``) in the audit log,
        then apply it with :meth:`quarantine` / :meth:`lift_quarantine` — while no other decision runs. The
        in-memory state then changes in the order of the log's records, which is the order the next start
        re-derives: a lift and a new quarantine racing each other cannot leave the model lifted in memory and
        quarantined in the log."""
        async with self._decisions:
            return await step()

    def quarantine(self, model: str, reason: str) -> None:
        """Quarantine ``model`` (in memory). The caller has written the audit record first
        (``decision`` = :data:`QUARANTINE`): that record is what keeps it quarantined across restarts."""
        with self._lock:
            self._quarantine[model] = reason
        log.error("model %s QUARANTINED: %s", model, reason)

    def lift_quarantine(self, model: str) -> bool:
        """Ends ``model``'s quarantine (in memory); False when it was not quarantined. Only
        ``Admin.LiftQuarantine`` calls it, after its :data:`QUARANTINE_LIFTED` audit record is durable."""
        with self._lock:
            reason = self._quarantine.pop(model, None)
        if reason is not None:
            log.info("model %s: quarantine lifted (it was: %s)", model, reason)
        return reason is not None

    def restore_quarantines(self, audit_dir: Path, observe: Callable[[dict[str, Any]], None] | None = None) -> int:
        """Re-derives the quarantined models from the audit log in ``audit_dir`` (at start, before any
        request); returns how many are quarantined. ``observe`` sees every ``decision`` record of the same
        pass, in order (the drift monitor's baseline ledger, :class:`bastion.assurance.drift.BaselineLedger`).

        Per model name, its last ``decision`` record with ``decision`` = :data:`QUARANTINE` or
        :data:`QUARANTINE_LIFTED` decides, whatever model digest is served now. Raises ``IntegrityError``
        when the log cannot be read back whole (:func:`bastion.audit.records.iter_records`: a missing
        segment or record, a malformed line): the caller refuses to start rather than forget a quarantine.

        Cost: one pass over every audit segment at start (every record is read and JSON-decoded: about 10 s
        per million records on the 2-core CI machine; bastion never prunes the log, so this grows with it).
        Limit: the records are checked for continuity (segments and seqs without a gap), not for hashes and
        signatures; a log rewritten by someone who holds the signing key is read as rewritten (``bastion
        audit verify`` with the public key and the witness detects that; the writer checks from the witnessed
        segment on at every start).
        """
        found: dict[str, str] = {}
        for rec in iter_records(audit_dir, kinds=("decision",)):
            if observe is not None:
                observe(rec)
            model, action = rec.get("model"), rec.get("decision")
            if not isinstance(model, str) or not model:
                continue
            if action == QUARANTINE:
                when = f"audit seq {rec['seq']}, {rec.get('time', '?')}"
                found[model] = f"{rec.get('event', '?')}: {rec.get('reason', '')} ({when})"
            elif action == QUARANTINE_LIFTED:
                found.pop(model, None)
        with self._lock:
            self._quarantine.update(found)
        for model, reason in found.items():
            log.error("model %s stays QUARANTINED (recorded in the audit log): %s", model, reason)
        return len(found)

    def attested(self, model: str) -> bool:
        """Whether the attestations release ``model`` (its served digest), whatever its quarantine; always
        True when attestations are not required. An admin's re-baselining of drift needs it."""
        if not self.enforced:
            return True
        with self._lock:
            rel = self._models.get(model)
        return rel is not None and rel.state == RELEASED

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
