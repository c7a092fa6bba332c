"""Drift monitoring of a served model (NIST 800-53 SI-4; AI 600-1 MS-2.7-009): teacher-forced log-prob
canaries against the go-live baseline.

**Canaries.** Drawn from a secret seed (:mod:`bastion.assurance.canaries`): raw text/continuation pairs and
conversations rendered with the model's chat template; nobody without the seed can predict or recognise
them. The engine's own forward pass gives the mean log-probability of each continuation's tokens
(:meth:`VllmEngine.prompt_logprobs`). The same weights on the same serving path give the same numbers up to
batching noise (about 1e-6 on CPU fp32); a nudge of the weights moves them by orders of magnitude more. At
start the monitor measures the canaries twice, once one at a time and once all together, and takes the
largest difference as the noise floor; tolerance = max(tolerance_factor x noise floor, min_tolerance). The
statistic is the largest per-canary absolute difference from the baseline. Canary texts are never logged.

**Baselines** live in ``<drift dir>/<served name>.baseline.json``: the model name, the digest they were taken
on, the seed id, the canary set's id and the values, with an HMAC-SHA256 (the seed's baseline key) over the
canonical JSON of all of that. Every baseline taken is also an audit ``decision`` record (principal
``bastion:assurance``, ``decision`` ``baseline``, ``event`` ``drift_baseline``, its ``reason`` starting
``mac=<the file's MAC> seed=<seed id>``); at start the server reads the log (the same pass that re-derives
quarantines) into a :class:`BaselineLedger`: per model name, the baseline the log says exists. Then:

- no file and no record: the model's first go-live; this measurement becomes the baseline (file, record);
- a file that does not verify (MAC, format, another seed, another model, another canary set), a file that is
  not the one the log records (another MAC: replaced or rolled back), or no file where the log records one
  (deleted): an **integrity alarm** — never a silent new baseline. Audited (event ``drift_integrity``,
  decision ``alert`` or ``quarantine`` by ``assurance.drift.quarantine``), logged, counted as an alert; the
  monitor stops checking (status ``integrity``) until an admin resets the baseline
  (``Admin.ResetDriftBaseline``: its own audited ``drift_baseline_reset`` record with principal and reason,
  then a new baseline, refused for a digest without a PASSED attestation while attestations are required);
- a verified file without a record (taken before the log existed, or copied from a server with the same
  seed): adopted, and recorded;
- a verified file for the same digest: compare (the serving path changed under the same weights);
- for another digest that the go-live gate has released (a signed PASSED attestation): a new go-live, the
  baseline is replaced (recorded);
- for another digest not released: compare against the old baseline: an unevaluated model is serving under
  the name (a swapped or tampered copy), which is exactly what must alarm.
A format-1 baseline (fixed public canaries, no MAC) is replaced (WARNING, recorded) only while the log
records no baseline for the model; after that it is an integrity alarm like any other unverified file.

A check over tolerance is confirmed by an immediate second one (two-stage); a confirmed drift writes an
audit record (decision "alert" or "quarantine", event "drift"), logs an ERROR, counts in
``bastion_drift_alerts_total`` and, by policy (``assurance.drift.quarantine``), quarantines the model.

Limits: the ledger is only as good as the audit log (a log reset by the operator, ``bastion audit resume``,
forgets the baselines recorded before it, and the next start adopts or takes them again); whoever can read
the seed file can forge a baseline file (not its audit record: a forged file does not match the MAC the log
records); the canaries hide *which* prompts are scored, not *that* the engine is asked for prompt
log-probabilities, which only the drift monitor does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.assurance.canaries import Canary, DriftSecret
from bastion.assurance.release import ASSURANCE_PRINCIPAL, RELEASED, ReleaseBook
from bastion.assurance.settings import DriftSettings
from bastion.engine.protocol import ChatTurn, Engine
from bastion.errors import BastionError, IntegrityError, InvalidArgument
from bastion.files import atomic_write_text, read_regular

log = logging.getLogger(__name__)
BASELINE_FORMAT = "bastion-drift-baseline/2"
LEGACY_FORMAT = "bastion-drift-baseline/1"  # fixed public canaries, no MAC
MAX_BASELINE_BYTES = 1 << 20
# Audit events (kind "decision") of the drift monitor and of the admin's reset.
DRIFT = "drift"
DRIFT_INTEGRITY = "drift_integrity"
DRIFT_BASELINE = "drift_baseline"
DRIFT_BASELINE_RESET = "drift_baseline_reset"
_RECORDED = re.compile(r"mac=(hmac-sha256:[0-9a-f]{64}) seed=([0-9a-f]{32})(?:;|$)")

# (event, model, digest, reason, action): an audit decision record of the server (AuditRecorder.alert).
OnEvent = Callable[[str, str, str, str, str], Awaitable[None]]


@dataclass(frozen=True)
class Recorded:
    """A baseline the audit log records: its file's MAC and seed id, and where the record is."""

    seq: int
    digest: str
    mac: str
    seed_id: str


class BaselineLedger:
    """Per model name, the baseline the audit log says exists (the last ``drift_baseline`` record, unless a
    ``drift_baseline_reset`` came after it). Filled at start from the log, then kept by the monitors."""

    def __init__(self) -> None:
        self._recorded: dict[str, Recorded] = {}

    def observe(self, rec: dict[str, Any]) -> None:
        """One ``decision`` record of the log, in order."""
        model, event = rec.get("model"), rec.get("event")
        if not isinstance(model, str) or not model:
            return
        if event == DRIFT_BASELINE and rec.get("principal") == ASSURANCE_PRINCIPAL:
            m = _RECORDED.match(str(rec.get("reason", "")))
            # A malformed record still says a baseline exists; "" matches no file (fails closed).
            mac, seed = (m.group(1), m.group(2)) if m else ("", "")
            self._recorded[model] = Recorded(int(rec.get("seq", -1)), str(rec.get("model_digest", "")), mac, seed)
        elif event == DRIFT_BASELINE_RESET:
            self._recorded.pop(model, None)

    def get(self, model: str) -> Recorded | None:
        return self._recorded.get(model)

    def set(self, model: str, recorded: Recorded) -> None:
        self._recorded[model] = recorded

    def forget(self, model: str) -> None:
        self._recorded.pop(model, None)


@dataclass(frozen=True)
class Baseline:
    """A verified baseline file."""

    model: str
    digest: str
    seed_id: str
    canary_set: str
    values: dict[str, float]
    mac: str


@dataclass
class DriftState:
    model: str
    status: str = "pending"  # pending / baselined / quiet / suspect / alert / integrity / error
    delta: float = 0.0  # largest per-canary |current - baseline| (nats per token)
    tolerance: float = 0.0
    noise_floor: float = 0.0
    baseline_digest: str = ""
    checks: int = 0
    alerts: int = 0
    last_check: float = 0.0
    seconds: float = 0.0  # duration of the last check
    detail: dict[str, float] = field(default_factory=dict)
    integrity: str = ""  # why the baseline is not trusted (status "integrity")


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


class DriftMonitor:
    """One per served model: scores its engine's prompt log-probabilities on the secret canaries."""

    def __init__(
        self,
        settings: DriftSettings,
        cache_dir: Path,
        engine: Engine,
        releases: ReleaseBook,
        on_event: OnEvent,
        secret: DriftSecret,
        ledger: BaselineLedger,
    ) -> None:
        self.settings = settings
        self.dir = settings.dir or cache_dir / "drift"
        self.engine = engine
        self.releases = releases
        self.on_event = on_event
        self.secret = secret
        self.ledger = ledger
        self.state = DriftState(engine.info.name)
        self._canaries: tuple[Canary, ...] = secret.canaries(settings)
        self._canary_set = secret.canary_set_id(self._canaries)
        self._spans: list[tuple[list[int], int]] = []
        self._baseline: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._seq = 0

    @property
    def _file(self) -> Path:
        return self.dir / f"{self.engine.info.name}.baseline.json"

    async def _prepare(self) -> None:
        if self._spans:
            return
        spans = []
        for c in self._canaries:
            if c.kind == "raw":
                prompt = await self.engine.tokenize(c.prompt, None)
                full = await self.engine.tokenize(c.prompt + c.continuation, None)
            else:
                prompt, full = await self._chat_ids(c)
            n = 0
            while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
                n += 1
            if len(full) - n < 2 or n < 1:  # the texts are secret: the error names the canary's id only
                raise BastionError(f"drift canary {c.id} ({c.kind}) has no continuation tokens")
            if len(full) > self.engine.info.max_context:
                raise BastionError(f"drift canary {c.id} is longer than the model's context (canary_words)")
            spans.append((full, n))
        self._spans = spans

    async def _chat_ids(self, c: Canary) -> tuple[list[int], list[int]]:
        """A chat canary's prompt and full ids through the model's template. A template that refuses a system
        turn gets its text at the head of the user message instead (the same for every start)."""
        turns, reply = c.turns, c.conversation()[-1]
        try:
            return await self.engine.tokenize(None, turns), await self.engine.tokenize(None, (*turns, reply))
        except InvalidArgument:
            if len(turns) < 2 or turns[0].role != "system":
                raise BastionError(f"drift canary {c.id}: the model's chat template refuses it") from None
        merged = (ChatTurn(role="user", content=f"{turns[0].content}\n\n{turns[1].content}"),)
        return await self.engine.tokenize(None, merged), await self.engine.tokenize(None, (*merged, reply))

    async def _one(self, i: int) -> float:
        ids, start = self._spans[i]
        self._seq += 1
        values: list[float] = await self.engine.prompt_logprobs(f"drift-{self._seq}-{i}", ids)
        scored = values[start - 1 :]  # values[j] is position j + 1
        return sum(scored) / len(scored)

    async def measure(self, *, together: bool = True) -> dict[str, float]:
        n = len(self._spans)
        if together:
            values = await asyncio.gather(*(self._one(i) for i in range(n)))
        else:
            values = [await self._one(i) for i in range(n)]
        return {c.id: v for c, v in zip(self._canaries, values, strict=True)}

    async def _calibrate(self) -> dict[str, float]:
        """Noise floor and tolerance; returns the one-at-a-time measurement (a baseline if one is taken)."""
        first = await self.measure(together=False)
        second = await self.measure(together=True)
        noise = max(abs(first[k] - second[k]) for k in first)
        st = self.state
        st.noise_floor = noise
        st.tolerance = max(self.settings.tolerance_factor * noise, self.settings.min_tolerance)
        return first

    # The baseline file.

    def _read(self) -> Baseline | str | None:
        """The verified baseline; LEGACY_FORMAT for a format-1 file; None when there is no file. Raises
        IntegrityError for anything else (unreadable, malformed, not verified, not this model's or set's)."""
        where = f"drift baseline {self._file}"
        try:
            raw = read_regular(self._file, MAX_BASELINE_BYTES)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise IntegrityError(f"{where}: unreadable ({exc.strerror or type(exc).__name__})") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise IntegrityError(f"{where}: not JSON") from None
        if not isinstance(data, dict):
            raise IntegrityError(f"{where}: not a baseline")
        if data.get("format") == LEGACY_FORMAT:
            return LEGACY_FORMAT
        if data.get("format") != BASELINE_FORMAT:
            raise IntegrityError(f"{where}: format must be {BASELINE_FORMAT}")
        mac = data.pop("mac", None)
        seed_id = data.get("seed_id")
        if seed_id != self.secret.seed_id:
            raise IntegrityError(
                f"{where}: taken under another drift seed ({str(seed_id)[:32]}; this server's is "
                f"{self.secret.seed_id}): it cannot be verified"
            )
        try:
            verified = self.secret.verify(_canonical(data), mac)
        except ValueError:
            verified = False
        if not verified:
            raise IntegrityError(f"{where}: its MAC does not verify (altered, or not written by this drift seed)")
        values = data.get("canaries")
        if not isinstance(values, dict) or not all(isinstance(v, float) for v in values.values()):
            raise IntegrityError(f"{where}: no canary values")
        if data.get("model") != self.engine.info.name:
            raise IntegrityError(f"{where}: taken for another model name")
        if data.get("canary_set") != self._canary_set or set(values) != {c.id for c in self._canaries}:
            raise IntegrityError(
                f"{where}: taken on another canary set (assurance.drift canaries, chat_canaries, canary_words "
                "or the generator changed)"
            )
        return Baseline(
            model=data["model"],
            digest=str(data.get("digest", "")),
            seed_id=seed_id,
            canary_set=self._canary_set,
            values={k: float(v) for k, v in values.items()},
            mac=str(mac),
        )

    def _write(self, values: dict[str, float]) -> Baseline:
        info = self.engine.info
        body: dict[str, Any] = {
            "format": BASELINE_FORMAT,
            "model": info.name,
            "digest": info.digest,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seed_id": self.secret.seed_id,
            "canary_set": self._canary_set,
            "canaries": values,
        }
        mac = self.secret.mac(_canonical(body))
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._file, json.dumps({**body, "mac": mac}, indent=1, sort_keys=True) + "\n", mode=0o600)
        return Baseline(info.name, info.digest, self.secret.seed_id, self._canary_set, dict(values), mac)

    async def _record(self, baseline: Baseline, why: str) -> None:
        """The audit record that says this baseline exists (durable before the monitor relies on it)."""
        reason = f"mac={baseline.mac} seed={baseline.seed_id}; {why}"
        await self.on_event(DRIFT_BASELINE, baseline.model, baseline.digest, reason, "baseline")
        self.ledger.set(baseline.model, Recorded(-1, baseline.digest, baseline.mac, baseline.seed_id))

    async def _take(self, values: dict[str, float], why: str, started: float) -> None:
        """A new baseline: the file first, then its record (a crash between the two leaves a verified file
        without a record, which the next start adopts; never a record without its file)."""
        baseline = await asyncio.to_thread(self._write, values)
        await self._record(baseline, why)
        self._baseline = dict(values)
        st = self.state
        st.baseline_digest, st.integrity = baseline.digest, ""
        st.status, st.seconds = "baselined", time.monotonic() - started
        log.info(
            "drift: baseline for %s taken (%s; %d canaries, %d chat-templated, seed %s, noise floor %.2e, "
            "tolerance %.2e)",
            baseline.model,
            why,
            len(values),
            sum(c.kind == "chat" for c in self._canaries),
            baseline.seed_id,
            st.noise_floor,
            st.tolerance,
        )

    async def _integrity(self, reason: str) -> None:
        """The baseline cannot be trusted: alarm (audited; quarantine by policy); no checks until a reset."""
        st, info = self.state, self.engine.info
        self._baseline = {}
        st.status, st.integrity, st.alerts = "integrity", reason, st.alerts + 1
        action = "quarantine" if self.settings.quarantine else "alert"
        log.error("drift INTEGRITY ALARM on %s (%s): %s; action: %s", info.name, info.digest, reason, action)

        async def decide() -> None:
            await self.on_event(DRIFT_INTEGRITY, info.name, info.digest, reason, action)
            if self.settings.quarantine:
                self.releases.quarantine(info.name, f"drift baseline: {reason}")

        await self.releases.decide(decide)

    async def start(self) -> None:
        """Noise floor and tolerance, then the baseline (taken, verified or an alarm) and a first check."""
        async with self._lock:
            started = time.monotonic()
            await self._prepare()
            first = await self._calibrate()
            info = self.engine.info
            recorded = self.ledger.get(info.name)
            try:
                found = await asyncio.to_thread(self._read)
                if recorded is not None:
                    at = f"seq {recorded.seq}" if recorded.seq >= 0 else "this run"
                    where = f"({at}, digest {recorded.digest})"
                    if found is None:
                        raise IntegrityError(
                            f"drift baseline {self._file} is missing; the audit log records one {where}"
                        )
                    if not isinstance(found, Baseline):
                        raise IntegrityError(
                            f"drift baseline {self._file} is an unauthenticated format-1 file; the audit log records "
                            f"a MACed one {where}"
                        )
                    if found.mac != recorded.mac:
                        raise IntegrityError(
                            f"drift baseline {self._file} is not the one the audit log records {where}: replaced or "
                            "rolled back"
                        )
            except IntegrityError as exc:
                await self._integrity(exc.detail or "drift baseline integrity")
                return
            if not isinstance(found, Baseline):
                why = "first go-live"
                if found == LEGACY_FORMAT:
                    why = "replaces an unauthenticated format-1 baseline"
                    log.warning("drift: %s had a format-1 baseline (fixed canaries, no MAC): replaced", info.name)
                await self._take(first, why, started)
                return
            if recorded is None:
                log.warning("drift: %s: a verified baseline without an audit record; adopted", info.name)
                await self._record(found, "adopted: a verified baseline file without an audit record")
            released = self.releases.release(info.name).state == RELEASED and self.releases.enforced
            if found.digest != info.digest and released:
                await self._take(first, f"new go-live: {info.digest} released (was {found.digest})", started)
                return
            self._baseline = dict(found.values)
            self.state.baseline_digest = found.digest
        await self.check()

    async def reset(self, why: str) -> DriftState:
        """A new baseline on an admin's word (``Admin.ResetDriftBaseline``, which recorded its
        ``drift_baseline_reset`` decision first): measured now, on whatever the engine serves."""
        async with self._lock:
            started = time.monotonic()
            self.ledger.forget(self.engine.info.name)
            await self._prepare()
            first = await self._calibrate()
            await self._take(first, f"reset by an admin: {why}", started)
            return self.state

    def _compare(self, current: dict[str, float]) -> float:
        missing = set(self._baseline) ^ set(current)
        if missing:
            return float("inf")
        return max(abs(current[k] - self._baseline[k]) for k in current)

    async def check(self) -> DriftState:
        """One check, confirmed by a second when over tolerance; alerts on a confirmed drift."""
        async with self._lock:
            st = self.state
            if not self._baseline:
                return st
            started = time.monotonic()
            current = await self.measure()
            delta = self._compare(current)
            if delta > st.tolerance:
                st.status = "suspect"
                again = await self.measure()
                delta = min(delta, self._compare(again))
            st.checks += 1
            st.delta, st.last_check, st.seconds = delta, time.time(), time.monotonic() - started
            if delta <= st.tolerance:
                st.status = "quiet"
                return st
            st.status, st.alerts = "alert", st.alerts + 1
            info = self.engine.info
            reason = (
                f"log-prob drift {delta:.3g} > tolerance {st.tolerance:.3g} against the baseline of "
                f"{st.baseline_digest} (two checks)"
            )
            action = "quarantine" if self.settings.quarantine else "alert"
            log.error("drift ALERT on %s (%s): %s; action: %s", info.name, info.digest, reason, action)

            async def decide() -> None:
                await self.on_event(DRIFT, info.name, info.digest, reason, action)
                if self.settings.quarantine:
                    self.releases.quarantine(info.name, reason)

            await self.releases.decide(decide)
            return st

    async def run(self) -> None:
        """start(), then a check every interval_s; errors are logged and counted, never fatal."""
        try:
            await self.start()
        except Exception as exc:  # noqa: BLE001 - the monitor must never take the server down
            self.state.status = "error"
            log.error(
                "drift monitor for %s could not start: %s",
                self.state.model,
                exc.detail if isinstance(exc, BastionError) else type(exc).__name__,
            )
            return
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - a failed check is reported; the monitor keeps running
                self.state.status = "error"
                log.error("drift check for %s failed: %s", self.state.model, type(exc).__name__)
