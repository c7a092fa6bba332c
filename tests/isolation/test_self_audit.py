"""The self-audit's procedure and statistics (bastion.isolation.self_audit), with simulated servers."""

from __future__ import annotations

import random

import pytest

from bastion.isolation.self_audit import AuditResult, Probe, auc_hit_faster, needs_confirmation, run_audit, verdict


class SimulatedServer:
    """A prefix cache keyed by (partition, first words): TTFT 0.1 s when the probe's prompt shares the
    victim's opening words in the same partition, else 0.3 s; small noise."""

    def __init__(self, shared: bool, seed: int = 1) -> None:
        self.shared = shared
        self.seen: set[tuple[str, str]] = set()
        self.rng = random.Random(seed)

    def sender(self, partition: str):
        async def send(prompt: str) -> Probe:
            head = " ".join(prompt.split()[:20])
            key = ("all" if self.shared else partition, head)
            hit = key in self.seen
            self.seen.add(key)
            return Probe((0.1 if hit else 0.3) + self.rng.uniform(0, 0.02), 128 if hit else 0, 40)

        return send


async def test_a_shared_cache_is_detected_and_a_partitioned_one_is_not() -> None:
    isolated = SimulatedServer(shared=False)
    within = await run_audit("within", isolated.sender("a"), isolated.sender("a"), samples=20, prompt_words=40, seed=3)
    across = await run_audit("across", isolated.sender("a"), isolated.sender("b"), samples=20, prompt_words=40, seed=4)
    assert within.distinguishable and within.p_value < 1e-6 and within.auc == 1.0 and within.cached_in_hits == 128
    assert not across.distinguishable and across.cached_in_hits == 0
    assert verdict(within, across)[0] is True

    leaky = SimulatedServer(shared=True)
    leak = await run_audit("across", leaky.sender("a"), leaky.sender("b"), samples=20, prompt_words=40, seed=5)
    ok, line = verdict(within, leak)
    assert not ok and line.startswith("LEAK")


async def test_no_power_is_inconclusive_not_a_pass() -> None:
    flat = SimulatedServer(shared=False)  # the probe never shares the victim's partition: no hits anywhere
    within = await run_audit("within", flat.sender("a"), flat.sender("c"), samples=10, prompt_words=40, seed=6)
    across = await run_audit("across", flat.sender("a"), flat.sender("b"), samples=10, prompt_words=40, seed=7)
    ok, line = verdict(within, across)
    assert not ok and line.startswith("inconclusive")


def test_auc() -> None:
    assert auc_hit_faster([1, 2], [3, 4]) == 1.0
    assert auc_hit_faster([3, 4], [1, 2]) == 0.0
    assert auc_hit_faster([1, 1], [1, 1]) == 0.5


async def test_bad_parameters_are_refused() -> None:
    s = SimulatedServer(shared=False).sender("a")
    with pytest.raises(ValueError, match="samples"):
        await run_audit("x", s, s, samples=1, prompt_words=40)


async def test_the_across_audit_detects_sharing_by_timing_after_a_within_audit_with_the_same_seed() -> None:
    """As `bastion audit-isolation` runs it: the within-tenant audit, then the across-tenants audit, one seed.
    On a shared partition (the control) the across audit's misses must be misses: had it reused the within
    audit's prompts, they would already be cached and the timing test would see no difference."""
    shared = SimulatedServer(shared=True)
    kw = dict(samples=10, prompt_words=40, seed=7)
    within = await run_audit("within-tenant", shared.sender("a"), shared.sender("a"), **kw)
    across = await run_audit("across-tenants", shared.sender("a"), shared.sender("b"), **kw)
    assert within.distinguishable
    assert all(p.cached_prompt_tokens == 0 for p in across.miss)
    assert across.distinguishable and across.auc == 1.0


async def test_hits_that_are_slower_are_not_reported_as_a_cache_leak() -> None:
    """A cache makes a hit *faster*; the paper's test (and its reference code, ``alternative="greater"``) is
    one-sided. A two-sided test called a server whose hit-procedure probes happened to be a few ms slower a
    LEAK (CI, 2026-12-03: 0 cached tokens, p = 0.026, hits 4.6 ms slower, AUC 0.17)."""
    victims: list[str] = []

    async def victim(prompt: str) -> Probe:
        victims.append(prompt)
        return Probe(0.2, 0, 40)

    async def probe(prompt: str) -> Probe:
        hit_procedure = prompt.split()[:20] == victims[-1].split()[:20]  # shares the victim's opening words
        return Probe((0.25 if hit_procedure else 0.2) + 0.001 * len(victims), 0, 40)

    slower = await run_audit("across", victim, probe, samples=6, prompt_words=40, seed=5)
    assert slower.auc == 0.0  # every hit slower than every miss: the two-sided p would be 0.002
    assert not slower.distinguishable and slower.p_value > 0.5
    ok, line = verdict(AuditResult("within", 0.05, p_value=0.001), slower)  # within: cache detected
    assert ok, line


def _result(name: str, p: float, cached: int = 0) -> AuditResult:
    r = AuditResult(name, 0.05, p_value=p)
    r.hit.append(Probe(0.2, cached, 40))
    return r


def test_a_chance_timing_difference_is_confirmed_before_it_is_called_a_leak() -> None:
    """At alpha 0.05 a clean server fails a single timing test once in 20 runs (e2e, 2026-12-03: 0 cached tokens,
    p = 0.044 with 8 samples; 3 x 30 samples against the same server afterwards: p = 0.59 / 0.88 / 0.59). A
    difference is a LEAK only when an independent second audit finds it too."""
    within = _result("within", 1e-4)
    ok, line = verdict(within, _result("across", 0.04), _result("confirm", 0.6))
    assert ok and "not reproduced" in line, line
    ok, line = verdict(within, _result("across", 0.04), _result("confirm", 0.01))
    assert not ok and line.startswith("LEAK") and "confirmed" in line, line
    ok, line = verdict(within, _result("across", 0.04))  # no second audit: the first one decides
    assert not ok and line.startswith("LEAK"), line


def test_cached_tokens_are_a_leak_without_any_timing_difference() -> None:
    within = _result("within", 1e-4)
    for across, confirm in (
        (_result("across", 0.9, cached=16), None),
        (_result("across", 0.04, cached=16), None),  # a difference with cached tokens: no second audit needed
        (_result("across", 0.04), _result("c", 0.7, 16)),  # the second audit's cached tokens count as well
    ):
        ok, line = verdict(within, across, confirm)
        assert not ok and line.startswith("LEAK") and "16 tokens" in line, line


def test_only_a_timing_difference_without_cached_tokens_asks_for_a_second_audit() -> None:
    assert needs_confirmation(_result("across", 0.04))
    assert not needs_confirmation(_result("across", 0.6))  # nothing found
    assert not needs_confirmation(_result("across", 0.04, cached=16))  # direct evidence: LEAK at once
    assert not needs_confirmation(_result("across", 0.6, cached=16))
    within = _result("within", 1e-4)
    for across in (_result("across", 0.6), _result("across", 0.04, cached=16)):
        with pytest.raises(ValueError, match="confirm"):  # a second audit where none was asked for is a misuse
            verdict(within, across, _result("confirm", 0.6))
