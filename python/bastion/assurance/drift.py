"""Drift monitoring of a served model (NIST 800-53 SI-4; AI 600-1 MS-2.7-009): teacher-forced log-prob
canaries against the go-live baseline.

Each canary is a fixed text and a fixed continuation; the engine's own forward pass gives the mean
log-probability of the continuation's tokens (:meth:`VllmEngine.prompt_logprobs`). The same weights on
the same serving path give the same numbers up to batching noise (about 1e-6 on CPU fp32); a nudge of
the weights moves them by orders of magnitude more. At start the monitor measures the canaries twice,
once one at a time and once all together, and takes the largest difference as the noise floor;
tolerance = max(tolerance_factor x noise floor, min_tolerance). The statistic is the largest per-canary
absolute difference from the baseline.

Baselines live in ``<drift dir>/<served name>.baseline.json`` with the digest they were taken on:
- none yet: the first measurement becomes the baseline (the model's go-live);
- same digest: compare (the serving path changed under the same weights: engine, kernels, hardware);
- another digest that the go-live gate has released (a signed PASSED attestation): that is a new
  go-live, the baseline is replaced (logged);
- another digest not released: compare against the old baseline: an unevaluated model is serving
  under the name (a swapped or tampered copy), which is exactly what must alarm.
A check over tolerance is confirmed by an immediate second one (two-stage); a confirmed drift writes an
audit record (decision "alert" or "quarantine", event "drift"), logs an ERROR, counts in
``bastion_drift_alerts_total`` and, by policy (``assurance.drift.quarantine``), quarantines the model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.assurance.release import RELEASED, ReleaseBook
from bastion.assurance.settings import DriftSettings
from bastion.engine.protocol import Engine
from bastion.errors import BastionError
from bastion.files import atomic_write_text

log = logging.getLogger(__name__)
BASELINE_FORMAT = "bastion-drift-baseline/1"

# (text, continuation): plain facts and fixed prose; the continuation is what is scored.
CANARIES: tuple[tuple[str, str], ...] = (
    ("The capital of France is", " Paris, a city on the river Seine."),
    ("Water boils at sea level at a temperature of", " one hundred degrees Celsius."),
    ("The largest planet in our solar system is", " Jupiter, a gas giant."),
    ("def add(a, b):\n   ", " return a + b\n"),
    ("One, two, three, four,", " five, six, seven, eight, nine, ten."),
    ("The opposite of hot is", " cold, and the opposite of up is down."),
    ("Monday, Tuesday, Wednesday,", " Thursday, Friday, Saturday, Sunday."),
    ("A triangle has three sides and a square has", " four sides."),
    ("The chemical symbol for gold is", " Au, from the Latin word aurum."),
    ("Photosynthesis turns sunlight, water and carbon dioxide into", " sugar and oxygen."),
    ("To be or not to be,", " that is the question."),
    ("The first month of the year is", " January and the last is December."),
    ("Dear customer, thank you for your order.", " Your parcel will arrive within three days."),
    ("SELECT name FROM users", " WHERE id = 42;"),
    ("The speed of light in vacuum is about", " three hundred thousand kilometres per second."),
    ("Cats and dogs are popular", " pets in many countries around the world."),
    ("import numpy as np\nx = np.", "zeros(10)\n"),
    ("The sun rises in the east and sets in the", " west."),
    ("Two plus two equals", " four, and three plus three equals six."),
    ("Once upon a time, in a small village,", " there lived an old woman and her cat."),
)

Scorer = Callable[[str, list[int]], Awaitable[list[float]]]


@dataclass
class DriftState:
    model: str
    status: str = "pending"  # pending / baselined / quiet / suspect / alert / error
    delta: float = 0.0  # largest per-canary |current - baseline| (nats per token)
    tolerance: float = 0.0
    noise_floor: float = 0.0
    baseline_digest: str = ""
    checks: int = 0
    alerts: int = 0
    last_check: float = 0.0
    seconds: float = 0.0  # duration of the last check
    detail: dict[str, float] = field(default_factory=dict)


class DriftMonitor:
    """One per served model: scores its engine's prompt log-probabilities on fixed probes."""

    def __init__(
        self,
        settings: DriftSettings,
        cache_dir: Path,
        engine: Engine,
        releases: ReleaseBook,
        on_alert: Callable[[str, str, str, str], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.dir = settings.dir or cache_dir / "drift"
        self.engine = engine
        self.releases = releases
        self.on_alert = on_alert  # (model, digest, reason, action)
        self.state = DriftState(engine.info.name)
        self._spans: list[tuple[list[int], int]] = []
        self._baseline: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._seq = 0

    @property
    def _file(self) -> Path:
        return self.dir / f"{self.engine.info.name}.baseline.json"

    async def _prepare(self) -> None:
        for text, cont in CANARIES:
            prompt = await self.engine.tokenize(text, None)
            full = await self.engine.tokenize(text + cont, None)
            n = 0
            while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
                n += 1
            if len(full) - n < 2:
                raise BastionError(f"drift canary {text!r} has no continuation tokens")
            self._spans.append((full, n))

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
        return {f"c{i:02d}": v for i, v in enumerate(values)}

    def _load(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BastionError(f"drift baseline {self._file} unreadable ({type(exc).__name__})") from None
        if data.get("format") != BASELINE_FORMAT or not isinstance(data.get("canaries"), dict):
            raise BastionError(f"drift baseline {self._file}: format must be {BASELINE_FORMAT}")
        return data

    def _save(self, values: dict[str, float]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        body = {
            "format": BASELINE_FORMAT,
            "model": self.engine.info.name,
            "digest": self.engine.info.digest,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "canaries": values,
        }
        atomic_write_text(self._file, json.dumps(body, indent=1, sort_keys=True) + "\n", mode=0o644)
        self._baseline = values
        self.state.baseline_digest = self.engine.info.digest

    async def start(self) -> None:
        """Noise floor and tolerance, then the baseline (taken, kept or replaced) and a first check."""
        async with self._lock:
            started = time.monotonic()
            await self._prepare()
            first = await self.measure(together=False)
            second = await self.measure(together=True)
            noise = max(abs(first[k] - second[k]) for k in first)
            st = self.state
            st.noise_floor = noise
            st.tolerance = max(self.settings.tolerance_factor * noise, self.settings.min_tolerance)
            info = self.engine.info
            data = self._load()
            released = self.releases.release(info.name).state == RELEASED and self.releases.enforced
            if data is None or (data["digest"] != info.digest and released):
                if data is not None:
                    log.info("drift: %s is a new go-live (%s released); baseline replaced", info.name, info.digest)
                self._save(first)
                st.status, st.seconds = "baselined", time.monotonic() - started
                log.info(
                    "drift: baseline for %s taken (%d canaries, noise floor %.2e, tolerance %.2e)",
                    info.name,
                    len(first),
                    noise,
                    st.tolerance,
                )
                return
            self._baseline = {k: float(v) for k, v in data["canaries"].items()}
            st.baseline_digest = data["digest"]
        await self.check()

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
            await self.on_alert(info.name, info.digest, reason, action)
            if self.settings.quarantine:
                self.releases.quarantine(info.name, reason)
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
