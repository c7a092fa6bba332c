"""The drift monitor's decisions with an engine whose log-probs we control: baseline on first go-live,
quiet on the same weights (within batching noise), a confirmed alert (and quarantine) on changed weights
under the same name, no alert on a one-off spike, a new baseline for a newly released digest."""

from __future__ import annotations

from pathlib import Path

from bastion.assurance.drift import CANARIES, DriftMonitor
from bastion.assurance.release import QUARANTINED, RELEASED, Release, ReleaseBook
from bastion.assurance.settings import AssuranceSettings, DriftSettings
from bastion.engine.protocol import ModelInfo


class ScoringEngine:
    """log p(token_i | prefix) = a fixed function of the ids, plus ``shift`` (the weights changed) and
    ``jitter`` alternating in sign per measurement round (batching noise)."""

    def __init__(self, digest: str = "blake3:" + "11" * 32, shift: float = 0.0, jitter: float = 0.0) -> None:
        self.info = ModelInfo(name="m", digest=digest, max_context=4096, device="cpu")
        self.shift, self.jitter = shift, jitter
        self.calls = 0
        self.spikes: list[float] = []  # per-call extra shift, consumed one per measurement round

    async def tokenize(self, prompt: str | None, conversation: object) -> list[int]:
        assert prompt is not None
        return list(prompt.encode())

    async def prompt_logprobs(self, request_id: str, ids: list[int]) -> list[float]:
        self.calls += 1
        sign = 1 if ((self.calls - 1) // len(CANARIES)) % 2 else -1  # flips every measurement round
        spike = self.spikes[0] if self.spikes else 0.0
        return [-((t * 7 + i) % 13) / 5 + self.shift + spike + sign * self.jitter for i, t in enumerate(ids[1:])]


def _monitor(
    tmp: Path, engine: ScoringEngine, book: ReleaseBook, alerts: list[tuple[str, ...]], quarantine: bool = True
) -> DriftMonitor:
    async def on_alert(*args: str) -> None:
        alerts.append(args)

    settings = DriftSettings(dir=tmp / "drift", quarantine=quarantine)
    return DriftMonitor(settings, tmp, engine, book, on_alert)


def _book(tmp: Path) -> ReleaseBook:
    return ReleaseBook(AssuranceSettings(require_attestation=False), tmp)


async def test_baseline_then_quiet_on_the_same_weights(tmp_path: Path) -> None:
    alerts: list[tuple[str, ...]] = []
    first = _monitor(tmp_path, ScoringEngine(jitter=1e-6), _book(tmp_path), alerts)
    await first.start()
    assert first.state.status == "baselined" and (tmp_path / "drift" / "m.baseline.json").exists()
    assert first.state.noise_floor > 0 and first.state.tolerance == max(5 * first.state.noise_floor, 1e-4)
    # A restart on the same weights: compared with the baseline, quiet (jitter is within tolerance).
    again = _monitor(tmp_path, ScoringEngine(jitter=1e-6), _book(tmp_path), alerts)
    await again.start()
    assert again.state.status == "quiet" and again.state.checks == 1 and again.state.delta < again.state.tolerance
    assert (await again.check()).status == "quiet" and alerts == []
    assert len(first._spans) == len(CANARIES)


async def test_changed_weights_under_the_same_name_alarm_and_quarantine(tmp_path: Path) -> None:
    alerts: list[tuple[str, ...]] = []
    await _monitor(tmp_path, ScoringEngine(), _book(tmp_path), alerts).start()
    book = _book(tmp_path)
    book.reload([ScoringEngine().info])
    perturbed = ScoringEngine(digest="blake3:" + "22" * 32, shift=5e-3)
    monitor = _monitor(tmp_path, perturbed, book, alerts)
    await monitor.start()
    st = monitor.state
    assert st.status == "alert" and st.alerts == 1 and abs(st.delta - 5e-3) < 1e-9
    assert st.baseline_digest == "blake3:" + "11" * 32
    ((model, digest, reason, action),) = alerts
    assert (model, digest, action) == ("m", "blake3:" + "22" * 32, "quarantine") and "drift" in reason
    assert book.release("m").state == QUARANTINED


async def test_alert_only_policy_does_not_quarantine(tmp_path: Path) -> None:
    alerts: list[tuple[str, ...]] = []
    await _monitor(tmp_path, ScoringEngine(), _book(tmp_path), alerts).start()
    book = _book(tmp_path)
    book.reload([ScoringEngine().info])
    monitor = _monitor(tmp_path, ScoringEngine(shift=1e-2), book, alerts, quarantine=False)
    await monitor.start()
    assert monitor.state.status == "alert" and alerts[0][3] == "alert"
    assert book.release("m").state == RELEASED


async def test_a_single_spike_is_not_confirmed(tmp_path: Path) -> None:
    alerts: list[tuple[str, ...]] = []
    engine = ScoringEngine()
    monitor = _monitor(tmp_path, engine, _book(tmp_path), alerts)
    await monitor.start()
    engine.spikes = [1e-2]  # the first check's measurement is off ...

    original = engine.prompt_logprobs
    seen = {"n": 0}

    async def once(request_id: str, ids: list[int]) -> list[float]:
        seen["n"] += 1
        if seen["n"] > len(CANARIES):  # ... the confirming one is not
            engine.spikes = []
        return await original(request_id, ids)

    engine.prompt_logprobs = once
    st = await monitor.check()
    assert st.status == "quiet" and alerts == []


async def test_a_newly_released_digest_is_a_new_go_live(tmp_path: Path) -> None:
    alerts: list[tuple[str, ...]] = []
    await _monitor(tmp_path, ScoringEngine(), _book(tmp_path), alerts).start()
    book = ReleaseBook(AssuranceSettings(require_attestation=True, accepted_suites=["ci"]), tmp_path)
    book._models = {"m": Release(RELEASED, "bastion-ci@1.0.0 PASSED signed by test")}
    upgraded = ScoringEngine(digest="blake3:" + "33" * 32, shift=0.5)
    monitor = _monitor(tmp_path, upgraded, book, alerts)
    await monitor.start()
    assert monitor.state.status == "baselined" and monitor.state.baseline_digest == "blake3:" + "33" * 32
    assert alerts == [] and (await monitor.check()).status == "quiet"
