"""The drift monitor's decisions with an engine whose log-probs we control: baseline on first go-live,
quiet on the same weights (within batching noise), a confirmed alert (and quarantine) on changed weights
under the same name, no alert on a one-off spike, a new baseline for a newly released digest.

Issue 15 (low, drift): the canaries come from a secret seed (raw and chat-templated ones, bounded by the
settings), the baseline is MACed and recorded in the audit log, and a baseline that is missing, altered,
rolled back, of another seed or of another model is an integrity alarm, never a silent new baseline
(``test_a_deleted_baseline_is_an_alarm_not_a_new_baseline`` and the tests after it fail on the code before).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bastion.assurance.canaries import DriftSecret, load_secret
from bastion.assurance.drift import DRIFT_BASELINE, DRIFT_INTEGRITY, BaselineLedger, DriftMonitor
from bastion.assurance.release import ASSURANCE_PRINCIPAL, QUARANTINED, RELEASED, Release, ReleaseBook
from bastion.assurance.settings import AssuranceSettings, DriftSettings
from bastion.engine.protocol import ChatTurn, ModelInfo
from bastion.errors import ConfigError, InvalidArgument

SEED = bytes(range(32))
N = DriftSettings().canaries

# The fixed canaries of the code before (bastion-drift-baseline/1): public, so recognisable.
OLD_PUBLIC_CANARIES = ("The capital of France is", "Water boils at sea level", "To be or not to be,")


class ScoringEngine:
    """log p(token_i | prefix) = a fixed function of the ids, plus ``shift`` (the weights changed) and
    ``jitter`` alternating in sign per measurement round (batching noise). Conversations are rendered like
    FakeEngine's chat template (``<role>content`` turns, then ``<assistant>``)."""

    def __init__(
        self, digest: str = "blake3:" + "11" * 32, shift: float = 0.0, jitter: float = 0.0, name: str = "m"
    ) -> None:
        self.info = ModelInfo(name=name, digest=digest, max_context=4096, device="cpu")
        self.shift, self.jitter = shift, jitter
        self.calls = 0
        self.spikes: list[float] = []  # per-call extra shift, consumed one per measurement round
        self.prompts: list[str] = []
        self.conversations: list[tuple[ChatTurn, ...]] = []

    async def tokenize(self, prompt: str | None, conversation: Any) -> list[int]:
        if prompt is not None:
            self.prompts.append(prompt)
            return list(prompt.encode())
        self.conversations.append(tuple(conversation))
        return list(("".join(f"<{t.role}>{t.content}" for t in conversation) + "<assistant>").encode())

    async def prompt_logprobs(self, request_id: str, ids: list[int]) -> list[float]:
        self.calls += 1
        sign = 1 if ((self.calls - 1) // N) % 2 else -1  # flips every measurement round
        spike = self.spikes[0] if self.spikes else 0.0
        return [-((t * 7 + i) % 13) / 5 + self.shift + spike + sign * self.jitter for i, t in enumerate(ids[1:])]


class Audit:
    """Stands in for the audit log: the monitors' decision records, and the ledger a restart reads from them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def on_event(self, event: str, model: str, digest: str, reason: str, action: str) -> None:
        self.records.append(
            {
                "seq": len(self.records),
                "principal": ASSURANCE_PRINCIPAL,
                "decision": action,
                "event": event,
                "model": model,
                "model_digest": digest,
                "reason": reason,
            }
        )

    def ledger(self) -> BaselineLedger:
        """What a (re)start derives from the log."""
        ledger = BaselineLedger()
        for rec in self.records:
            ledger.observe(rec)
        return ledger

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == event]


def _monitor(
    tmp: Path,
    engine: ScoringEngine,
    book: ReleaseBook,
    audit: Audit,
    quarantine: bool = True,
    seed: bytes = SEED,
    **drift: Any,
) -> DriftMonitor:
    settings = DriftSettings(dir=tmp / "drift", quarantine=quarantine, **drift)
    return DriftMonitor(settings, tmp, engine, book, audit.on_event, DriftSecret(seed), audit.ledger())


def _book(tmp: Path) -> ReleaseBook:
    return ReleaseBook(AssuranceSettings(require_attestation=False), tmp)


def _released_book(tmp: Path) -> ReleaseBook:
    book = ReleaseBook(AssuranceSettings(require_attestation=True, accepted_suites=["ci"]), tmp)
    book._models = {"m": Release(RELEASED, "bastion-ci@1.0.0 PASSED signed by test")}
    return book


def _alerts(audit: Audit) -> list[dict[str, Any]]:
    return [r for r in audit.records if r["event"] != DRIFT_BASELINE]


async def test_baseline_then_quiet_on_the_same_weights(tmp_path: Path) -> None:
    audit = Audit()
    first = _monitor(tmp_path, ScoringEngine(jitter=1e-6), _book(tmp_path), audit)
    await first.start()
    assert first.state.status == "baselined" and (tmp_path / "drift" / "m.baseline.json").exists()
    assert first.state.noise_floor > 0 and first.state.tolerance == max(5 * first.state.noise_floor, 1e-4)
    (recorded,) = audit.events(DRIFT_BASELINE)  # the go-live baseline is in the audit log
    assert recorded["decision"] == "baseline" and recorded["model_digest"] == "blake3:" + "11" * 32
    assert recorded["reason"].startswith("mac=hmac-sha256:") and "first go-live" in recorded["reason"]
    # A restart on the same weights: compared with the baseline, quiet (jitter is within tolerance).
    again = _monitor(tmp_path, ScoringEngine(jitter=1e-6), _book(tmp_path), audit)
    await again.start()
    assert again.state.status == "quiet" and again.state.checks == 1 and again.state.delta < again.state.tolerance
    assert (await again.check()).status == "quiet" and _alerts(audit) == []
    assert len(first._spans) == N and len(audit.events(DRIFT_BASELINE)) == 1


async def test_changed_weights_under_the_same_name_alarm_and_quarantine(tmp_path: Path) -> None:
    audit = Audit()
    await _monitor(tmp_path, ScoringEngine(), _book(tmp_path), audit).start()
    book = _book(tmp_path)
    book.reload([ScoringEngine().info])
    perturbed = ScoringEngine(digest="blake3:" + "22" * 32, shift=5e-3)
    monitor = _monitor(tmp_path, perturbed, book, audit)
    await monitor.start()
    st = monitor.state
    assert st.status == "alert" and st.alerts == 1 and abs(st.delta - 5e-3) < 1e-9
    assert st.baseline_digest == "blake3:" + "11" * 32
    (alert,) = _alerts(audit)
    assert (alert["event"], alert["model"], alert["model_digest"], alert["decision"]) == (
        "drift",
        "m",
        "blake3:" + "22" * 32,
        "quarantine",
    )
    assert "drift" in alert["reason"] and book.release("m").state == QUARANTINED


async def test_alert_only_policy_does_not_quarantine(tmp_path: Path) -> None:
    audit = Audit()
    await _monitor(tmp_path, ScoringEngine(), _book(tmp_path), audit).start()
    book = _book(tmp_path)
    book.reload([ScoringEngine().info])
    monitor = _monitor(tmp_path, ScoringEngine(shift=1e-2), book, audit, quarantine=False)
    await monitor.start()
    assert monitor.state.status == "alert" and _alerts(audit)[0]["decision"] == "alert"
    assert book.release("m").state == RELEASED


async def test_a_single_spike_is_not_confirmed(tmp_path: Path) -> None:
    audit = Audit()
    engine = ScoringEngine()
    monitor = _monitor(tmp_path, engine, _book(tmp_path), audit)
    await monitor.start()
    engine.spikes = [1e-2]  # the first check's measurement is off ...

    original = engine.prompt_logprobs
    seen = {"n": 0}

    async def once(request_id: str, ids: list[int]) -> list[float]:
        seen["n"] += 1
        if seen["n"] > N:  # ... the confirming one is not
            engine.spikes = []
        return await original(request_id, ids)

    engine.prompt_logprobs = once  # type: ignore[method-assign]  # a spike for one measurement round only
    st = await monitor.check()
    assert st.status == "quiet" and _alerts(audit) == []


async def test_a_newly_released_digest_is_a_new_go_live(tmp_path: Path) -> None:
    audit = Audit()
    await _monitor(tmp_path, ScoringEngine(), _book(tmp_path), audit).start()
    upgraded = ScoringEngine(digest="blake3:" + "33" * 32, shift=0.5)
    monitor = _monitor(tmp_path, upgraded, _released_book(tmp_path), audit)
    await monitor.start()
    assert monitor.state.status == "baselined" and monitor.state.baseline_digest == "blake3:" + "33" * 32
    assert _alerts(audit) == [] and (await monitor.check()).status == "quiet"
    new = audit.events(DRIFT_BASELINE)[-1]  # recorded: the log now expects this one
    assert new["model_digest"] == "blake3:" + "33" * 32 and "new go-live" in new["reason"]


# Issue 15: secret canaries.


async def test_canaries_are_derived_from_the_secret_seed_raw_and_chat_templated(tmp_path: Path) -> None:
    """What the engine is asked depends on the seed only: the same seed gives the same canaries, another
    seed others; none is a public fixed text; some are conversations rendered with the chat template; the
    number and length follow the settings."""
    seen: list[ScoringEngine] = []
    for seed, d in ((SEED, "a"), (SEED, "b"), (bytes(32), "c")):
        engine = ScoringEngine()
        await _monitor(tmp_path / d, engine, _book(tmp_path), Audit(), seed=seed).start()
        seen.append(engine)
    a, b, c = seen
    assert a.prompts == b.prompts and a.conversations == b.conversations
    assert not set(a.prompts) & set(c.prompts) and not set(a.conversations) & set(c.conversations)
    settings = DriftSettings()
    assert len(a.conversations) == 2 * settings.chat_canaries  # each: the prompt, then with the reply
    assert len(a.prompts) == 2 * (settings.canaries - settings.chat_canaries)
    assert all(not p.startswith(OLD_PUBLIC_CANARIES) for p in a.prompts)
    assert {t.role for conv in a.conversations for t in conv} >= {"user", "assistant"}

    bounded = DriftSettings(canaries=6, chat_canaries=2, canary_words=48)
    canaries = DriftSecret(os.urandom(32)).canaries(bounded)
    assert [c.kind for c in canaries] == ["chat", "chat", "raw", "raw", "raw", "raw"]
    for c in canaries:
        words = len(c.prompt.split()) + sum(len(t.content.split()) for t in c.turns) + len(c.continuation.split())
        assert 10 <= words <= 48, c.id


def test_the_seed_file_is_created_private_once_and_checked(tmp_path: Path) -> None:
    """Default: <cache_dir>/keys/drift.key, 32 random bytes, 0600, created once. A configured file must
    exist, be a regular file (no symlink), 32 bytes, 0600 or 0400."""
    s = load_secret(DriftSettings(), tmp_path)
    key = tmp_path / "keys" / "drift.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert load_secret(DriftSettings(), tmp_path).seed_id == s.seed_id  # not replaced on the next start
    assert s.seed_id not in repr(key.read_bytes()) and key.read_bytes().hex() not in repr(s)
    with pytest.raises(ConfigError, match="cannot open"):
        load_secret(DriftSettings(seed_file=tmp_path / "absent.key"), tmp_path)
    link = tmp_path / "link.key"
    link.symlink_to(key)
    with pytest.raises(ConfigError, match="symlinks are refused"):
        load_secret(DriftSettings(seed_file=link), tmp_path)
    loose = tmp_path / "loose.key"
    loose.write_bytes(os.urandom(32))
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="0600 or 0400"):
        load_secret(DriftSettings(seed_file=loose), tmp_path)
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 16)
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        load_secret(DriftSettings(seed_file=short), tmp_path)


def test_chat_canaries_cannot_outnumber_the_canaries() -> None:
    with pytest.raises(ValueError, match="chat_canaries"):
        DriftSettings(canaries=4, chat_canaries=5)


# Issue 15: the baseline is authenticated and expected; anything else is an alarm.


async def _go_live(tmp: Path) -> Audit:
    audit = Audit()
    monitor = _monitor(tmp, ScoringEngine(), _book(tmp), audit)
    await monitor.start()
    assert monitor.state.status == "baselined"
    return audit


async def _restart_alarms(tmp: Path, audit: Audit, match: str, **kw: Any) -> DriftMonitor:
    """A restart on the same weights: an integrity alarm (audited, quarantined), no baseline written."""
    book = _book(tmp)
    book.reload([ScoringEngine().info])
    baseline = tmp / "drift" / "m.baseline.json"
    before = baseline.read_bytes() if baseline.exists() else None
    monitor = _monitor(tmp, ScoringEngine(), book, audit, **kw)
    await monitor.start()
    st = monitor.state
    assert st.status == "integrity" and st.alerts == 1 and match in st.integrity, st.integrity
    (alarm,) = audit.events(DRIFT_INTEGRITY)
    assert alarm["decision"] == "quarantine" and alarm["model"] == "m" and match in alarm["reason"]
    assert book.release("m").state == QUARANTINED
    assert (baseline.read_bytes() if baseline.exists() else None) == before  # never silently replaced
    assert len(audit.events(DRIFT_BASELINE)) == 1  # no new baseline recorded
    assert (await monitor.check()).checks == 0  # nothing to compare with until an admin resets it
    return monitor


async def test_a_deleted_baseline_is_an_alarm_not_a_new_baseline(tmp_path: Path) -> None:
    audit = await _go_live(tmp_path)
    (tmp_path / "drift" / "m.baseline.json").unlink()
    await _restart_alarms(tmp_path, audit, "is missing; the audit log records one")


async def test_an_altered_baseline_is_an_alarm(tmp_path: Path) -> None:
    audit = await _go_live(tmp_path)
    f = tmp_path / "drift" / "m.baseline.json"
    data = json.loads(f.read_text())
    data["canaries"] = {k: v + 1.0 for k, v in data["canaries"].items()}  # hide a drift of 1 nat per token
    f.write_text(json.dumps(data))
    await _restart_alarms(tmp_path, audit, "MAC does not verify")


async def test_a_baseline_of_another_seed_is_an_alarm(tmp_path: Path) -> None:
    audit = await _go_live(tmp_path)
    await _restart_alarms(tmp_path, audit, "another drift seed", seed=bytes(32))


async def test_a_baseline_of_another_canary_set_is_an_alarm(tmp_path: Path) -> None:
    audit = await _go_live(tmp_path)
    await _restart_alarms(tmp_path, audit, "another canary set", canaries=8, chat_canaries=2)


async def test_a_baseline_of_another_model_is_an_alarm(tmp_path: Path) -> None:
    """A valid baseline of model "other", renamed to m's file (no record for m: nothing else would alarm)."""
    audit = Audit()
    other = _monitor(tmp_path, ScoringEngine(name="other"), _book(tmp_path), audit)
    await other.start()
    (tmp_path / "drift" / "other.baseline.json").rename(tmp_path / "drift" / "m.baseline.json")
    audit.records.clear()
    audit.records.append({"seq": 0, "event": "start"})  # a log with no baseline of m
    book = _book(tmp_path)
    monitor = _monitor(tmp_path, ScoringEngine(), book, audit)
    await monitor.start()
    assert monitor.state.status == "integrity" and "another model name" in monitor.state.integrity


async def test_a_rolled_back_baseline_is_an_alarm(tmp_path: Path) -> None:
    """The go-live baseline of digest 11, put back after digest 33 went live: valid MAC, same seed, but not
    the baseline the audit log records."""
    audit = await _go_live(tmp_path)
    f = tmp_path / "drift" / "m.baseline.json"
    old = f.read_bytes()
    upgraded = ScoringEngine(digest="blake3:" + "33" * 32, shift=0.5)
    await _monitor(tmp_path, upgraded, _released_book(tmp_path), audit).start()
    assert f.read_bytes() != old
    f.write_bytes(old)
    book = _released_book(tmp_path)
    monitor = _monitor(tmp_path, ScoringEngine(digest="blake3:" + "33" * 32, shift=0.5), book, audit)
    await monitor.start()
    assert monitor.state.status == "integrity" and "not the one the audit log records" in monitor.state.integrity


async def test_a_verified_baseline_without_a_record_is_adopted_and_recorded(tmp_path: Path) -> None:
    """Taken before the log existed, or copied from a server with the same seed: its MAC proves who wrote it."""
    await _go_live(tmp_path)
    audit = Audit()  # a log that records nothing
    monitor = _monitor(tmp_path, ScoringEngine(), _book(tmp_path), audit)
    await monitor.start()
    assert monitor.state.status == "quiet"
    (adopted,) = audit.events(DRIFT_BASELINE)
    assert "adopted" in adopted["reason"]
    assert audit.ledger().get("m") is not None


async def test_a_format_1_baseline_is_replaced_only_while_none_is_recorded(tmp_path: Path) -> None:
    legacy = {"format": "bastion-drift-baseline/1", "model": "m", "digest": "blake3:" + "11" * 32, "canaries": {}}
    f = tmp_path / "drift" / "m.baseline.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps(legacy))
    audit = Audit()
    monitor = _monitor(tmp_path, ScoringEngine(), _book(tmp_path), audit)
    await monitor.start()  # the upgrade: no baseline recorded yet
    assert monitor.state.status == "baselined" and "format-1" in audit.events(DRIFT_BASELINE)[0]["reason"]
    f.write_text(json.dumps(legacy))  # after that, a format-1 file is an unauthenticated substitute
    await _restart_alarms(tmp_path, audit, "unauthenticated format-1")


async def test_an_admin_reset_takes_a_new_baseline(tmp_path: Path) -> None:
    audit = await _go_live(tmp_path)
    (tmp_path / "drift" / "m.baseline.json").unlink()
    monitor = await _restart_alarms(tmp_path, audit, "is missing")
    # The admin's reset record (Admin.ResetDriftBaseline writes it first), then the monitor's new baseline.
    audit.records.append({"seq": len(audit.records), "event": "drift_baseline_reset", "model": "m"})
    st = await monitor.reset("restored from a lost disk, ticket 9")
    assert st.status == "baselined" and (tmp_path / "drift" / "m.baseline.json").exists()
    assert "reset by an admin: restored from a lost disk" in audit.events(DRIFT_BASELINE)[-1]["reason"]
    assert (await monitor.check()).status == "quiet"
    again = _monitor(tmp_path, ScoringEngine(), _book(tmp_path), audit)  # the restart trusts the new one
    await again.start()
    assert again.state.status == "quiet"


async def test_a_template_without_a_system_role_gets_the_system_text_in_the_user_turn(tmp_path: Path) -> None:
    class NoSystem(ScoringEngine):
        async def tokenize(self, prompt: str | None, conversation: Any) -> list[int]:
            if conversation is not None and any(t.role == "system" for t in conversation):
                raise InvalidArgument("conversation", "cannot be rendered with the model's chat template")
            return await super().tokenize(prompt, conversation)

    engine = NoSystem()
    monitor = _monitor(tmp_path, engine, _book(tmp_path), Audit())
    await monitor.start()
    assert monitor.state.status == "baselined" and len(monitor._spans) == N
    assert any(conv[0].content.startswith("You are") for conv in engine.conversations)
