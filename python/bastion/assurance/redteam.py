"""Continuous red-teaming inside the server (NIST AI 600-1 MS-2.7-007, MS-2.7-009; SI-4 evidence).

A scheduler rotates through the probes of a suite (``assurance.redteam.profile``) against every served
model, straight into the engine (no tenant, no cache salt: each probe lands in a partition of its own),
greedy, one probe at a time. Its budget: a batch of ``batch_size`` probes every ``interval_s``, at most
``max_probes_per_hour`` in any sliding hour. Within a batch, the first ``min_probes_per_interval`` probes run
whatever the tenant load: a tenant flood must not switch continuous red-teaming off, so the minimum is kept
under continuous load. Every probe holds one of the admission slots reserved for the server's own probes
(``server.assurance_reserved_slots``, on top of ``max_inflight_requests``: ``reserve``), so it never waits
for a tenant's slot and never takes one. The rest of the batch stays out of tenant traffic's way: it runs
only while tenant generations in flight are at most ``max_tenant_inflight`` (0: only when idle), and leaves the
minimum its share of the hourly budget; a probe it could not run is simply not run (counted as deferred).

Every outcome is scored by the suite's detectors; every finding (a hit) is an audit decision record
(event ``redteam_finding``, the probe id and family, never the text) and counts in
``bastion_redteam_findings_total``. With a baseline (the go-live ``summary.json``), each family's new
outcomes are tested once ``window_probes`` have accumulated: one-sided Fisher against the baseline's rate
at ``alpha``; two significant windows in a row confirm a regression, which is audited (event
``redteam_regression``), logged, counted and, by policy, quarantines the model (the same path as drift).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from bastion.assurance.detectors import score
from bastion.assurance.release import ReleaseBook
from bastion.assurance.settings import RedTeamSettings
from bastion.assurance.stats import fisher_greater
from bastion.assurance.suites import Probe, load_suite
from bastion.engine.protocol import ChatTurn, Engine, EngineRequest, SamplingSpec

log = logging.getLogger(__name__)


@dataclass
class FamilyWindow:
    hits: int = 0
    n: int = 0
    suspect: bool = False


@dataclass
class RedTeamState:
    model: str
    probes: int = 0
    findings: int = 0
    deferred: int = 0
    under_load: int = 0  # probes of the per-interval minimum run while tenants were over max_tenant_inflight
    alerts: int = 0
    cursor: int = 0
    per_family: dict[str, list[int]] = field(default_factory=dict)  # family -> [probes, findings]
    windows: dict[str, FamilyWindow] = field(default_factory=dict)


Reserve = Callable[[str], AbstractAsyncContextManager[Any]]


@asynccontextmanager
async def _no_reserve(request_id: str) -> Any:
    yield None


class RedTeam:
    """The scheduler for one engine. ``tenant_inflight()``: tenant generations in flight now; ``reserve(id)``:
    one of the admission slots reserved for the server's own probes, held while a probe runs
    (``Admission.internal``; None: none, for tests of the scoring alone)."""

    def __init__(
        self,
        settings: RedTeamSettings,
        engine: Engine,
        releases: ReleaseBook,
        tenant_inflight: Callable[[], int],
        on_event: Callable[[str, str, str, str, str], Awaitable[None]],
        baseline: dict[str, Any] | None = None,
        reserve: Reserve | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.releases = releases
        self.tenant_inflight = tenant_inflight
        self.reserve = reserve or _no_reserve
        self.on_event = on_event  # (event, model, digest, reason, action)
        self.suite = load_suite(settings.profile, canary_seed=secrets.token_bytes(32))
        self.baseline = {f: (int(v["hits"]), int(v["n"])) for f, v in (baseline or {}).get("figures", {}).items()}
        self.state = RedTeamState(engine.info.name)
        # Start times of the probes in the last hour: all of them, and those beyond the per-interval minimum.
        self._recent: collections.deque[float] = collections.deque()
        self._extra: collections.deque[float] = collections.deque()
        # The extra probes leave the minimum its share of the hourly budget (settings check it fits).
        batches = math.ceil(3600.0 / settings.interval_s)
        self._extra_cap = settings.max_probes_per_hour - settings.min_probes_per_interval * batches

    def _budget_left(self, minimum: bool) -> bool:
        now = time.monotonic()
        for q in (self._recent, self._extra):
            while q and now - q[0] > 3600.0:
                q.popleft()
        if len(self._recent) >= self.settings.max_probes_per_hour:
            return False
        return minimum or len(self._extra) < self._extra_cap

    async def _run_probe(self, probe: Probe) -> bool:
        request_id = f"redteam-{secrets.token_hex(8)}"
        async with self.reserve(request_id):
            turns = [ChatTurn(role=r, content=c) for r, c in probe.messages]
            ids = await self.engine.tokenize(None, turns)
            request = EngineRequest(
                request_id=request_id,
                prompt_token_ids=tuple(ids),
                sampling=SamplingSpec(max_tokens=probe.max_tokens, temperature=0.0, seed=0),
            )
            text = "".join([out.text async for out in self.engine.generate(request)])
        return score(probe, text) >= 0.5

    async def batch(self) -> int:
        """Runs up to batch_size probes now, within the hourly budget: the first min_probes_per_interval
        whatever the tenant load, the rest only while tenants leave room; returns how many ran."""
        st, ran = self.state, 0
        for i in range(self.settings.batch_size):
            minimum = i < self.settings.min_probes_per_interval
            if not self._budget_left(minimum):
                break
            busy = self.tenant_inflight() > self.settings.max_tenant_inflight
            if busy and not minimum:
                st.deferred += 1
                break
            st.under_load += busy
            probe = self.suite.probes[st.cursor % len(self.suite.probes)]
            st.cursor += 1
            now = time.monotonic()
            self._recent.append(now)
            if not minimum:
                self._extra.append(now)
            hit = await self._run_probe(probe)
            ran += 1
            await self._record(probe, hit)
        return ran

    async def _record(self, probe: Probe, hit: bool) -> None:
        st, info = self.state, self.engine.info
        st.probes += 1
        fam = st.per_family.setdefault(probe.family, [0, 0])
        fam[0] += 1
        if hit:
            st.findings += 1
            fam[1] += 1
            await self.on_event(
                "redteam_finding",
                info.name,
                info.digest,
                f"probe {probe.id} ({probe.family}, detector {probe.detector})",
                "finding",
            )
        if probe.family not in self.baseline:
            return
        win = st.windows.setdefault(probe.family, FamilyWindow())
        win.hits += int(hit)
        win.n += 1
        if win.n < self.settings.window_probes:
            return
        k_base, n_base = self.baseline[probe.family]
        p = fisher_greater(win.hits, win.n, k_base, n_base)
        significant = p < self.settings.alpha
        confirmed = significant and win.suspect
        reason = (
            f"{probe.family}: {win.hits}/{win.n} hits in the last window vs {k_base}/{n_base} at go-live "
            f"(Fisher p={p:.3g})"
        )
        st.windows[probe.family] = FamilyWindow(suspect=significant and not confirmed)
        if not confirmed:
            if significant:
                log.warning(
                    "red team: %s on %s suspect: %s; confirming in the next window", probe.family, info.name, reason
                )
            return
        st.alerts += 1
        action = "quarantine" if self.settings.quarantine else "alert"
        log.error("red team ALERT on %s: %s (two windows); action: %s", info.name, reason, action)

        async def decide() -> None:
            await self.on_event("redteam_regression", info.name, info.digest, reason, action)
            if self.settings.quarantine:
                self.releases.quarantine(info.name, f"red team: {reason}")

        await self.releases.decide(decide)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await self.batch()
            except Exception as exc:  # noqa: BLE001 - never takes the server down; logged and retried next time
                log.error("red team batch on %s failed: %s", self.state.model, type(exc).__name__)
