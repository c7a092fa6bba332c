"""Prompt-cache isolation self-audit: the statistical audit of Gu et al., "Auditing Prompt Caching in
Language Model APIs" (ICML 2025), run against a live bastion server.

Each sample runs one *hit* and one *miss* procedure, in random order so that drift hits both alike:

- hit: the victim sends a fresh random prompt; the probe then sends a prompt sharing its first
  ``shared_fraction`` (0.95 as in the paper) and ending differently;
- miss: the victim sends a fresh random prompt; the probe then sends an unrelated fresh prompt.

The probe's time to first token is recorded in both. A one-sided two-sample Kolmogorov-Smirnov test asks
whether hits are faster (a cache makes them faster; the paper's test, ``alternative="greater"`` in its
reference code: a two-sided one also flags hits that happen to be slower, a false LEAK twice as often), with
the ROC AUC of "hit is faster", and ``cached_prompt_tokens`` of the probe's requests is kept as direct
evidence. Run with the probe in the victim's tenant, the audit must detect the cache (it has
power); run with the probe in another tenant, it must not (p > alpha and no cached tokens).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy.stats import ks_2samp

# Common English words: random prompts made of them tokenize to about one token per word.
WORDS = [
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
]


@dataclass(frozen=True)
class Probe:
    """One probe request as observed by the client."""

    ttft_s: float
    cached_prompt_tokens: int
    prompt_tokens: int


# (prompt) -> Probe; sends one request with max_tokens=1 and times its first message.
Send = Callable[[str], Awaitable[Probe]]


@dataclass
class AuditResult:
    name: str
    alpha: float
    hit: list[Probe] = field(default_factory=list)
    miss: list[Probe] = field(default_factory=list)
    ks_statistic: float = 0.0
    p_value: float = 1.0
    auc: float = 0.5

    @property
    def distinguishable(self) -> bool:
        return self.p_value < self.alpha

    @property
    def cached_in_hits(self) -> int:
        return max((p.cached_prompt_tokens for p in self.hit), default=0)

    def summary(self) -> dict[str, Any]:
        def med(xs: list[float]) -> float:
            return sorted(xs)[len(xs) // 2] if xs else 0.0

        return {
            "name": self.name,
            "samples": len(self.hit),
            "alpha": self.alpha,
            "test": "Kolmogorov-Smirnov, one-sided: hits faster",
            "ks_statistic": round(self.ks_statistic, 4),
            "p_value": self.p_value,
            "auc": round(self.auc, 4),
            "distinguishable": self.distinguishable,
            "median_ttft_hit_ms": round(1000 * med([p.ttft_s for p in self.hit]), 2),
            "median_ttft_miss_ms": round(1000 * med([p.ttft_s for p in self.miss]), 2),
            "max_cached_prompt_tokens_hit": self.cached_in_hits,
            "max_cached_prompt_tokens_miss": max((p.cached_prompt_tokens for p in self.miss), default=0),
            "mean_prompt_tokens": round(sum(p.prompt_tokens for p in self.hit) / max(1, len(self.hit)), 1),
            "hit": [asdict(p) for p in self.hit],
            "miss": [asdict(p) for p in self.miss],
        }


def auc_hit_faster(hit: list[float], miss: list[float]) -> float:
    """P(a hit's TTFT < a miss's TTFT), ties counting half (the Mann-Whitney U statistic, normalised)."""
    wins = sum((h < m) + 0.5 * (h == m) for h in hit for m in miss)
    return wins / max(1, len(hit) * len(miss))


def _words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


async def run_audit(
    name: str,
    victim: Send,
    probe: Send,
    *,
    samples: int,
    prompt_words: int,
    shared_fraction: float = 0.95,
    alpha: float = 0.05,
    seed: int | None = None,
    on_sample: Callable[[int], None] | None = None,
) -> AuditResult:
    if samples < 2 or prompt_words < 8 or not 0 < shared_fraction < 1:
        raise ValueError("samples >= 2, prompt_words >= 8 and 0 < shared_fraction < 1 are required")
    # Prompts drawn per audit name: two audits with one seed (the CLI's within-tenant then across-tenants runs)
    # never send the same prompt, so neither finds the other's prompts cached, a miss stays a miss.
    rng = random.Random(f"{seed}/{name}") if seed is not None else random.Random()
    shared = int(prompt_words * shared_fraction)
    result = AuditResult(name, alpha)
    for i in range(samples):
        for arm in rng.sample(("hit", "miss"), 2):
            victim_prompt = _words(rng, prompt_words)
            await victim(" ".join(victim_prompt))
            if arm == "hit":
                text = " ".join(victim_prompt[:shared] + _words(rng, prompt_words - shared))
                result.hit.append(await probe(text))
            else:
                result.miss.append(await probe(" ".join(_words(rng, prompt_words))))
        if on_sample:
            on_sample(i + 1)
    hit, miss = [p.ttft_s for p in result.hit], [p.ttft_s for p in result.miss]
    # "greater": the hits' empirical CDF lies above the misses' somewhere, i.e. hits are faster
    test = ks_2samp(hit, miss, alternative="greater")
    result.ks_statistic, result.p_value = float(test.statistic), float(test.pvalue)
    result.auc = auc_hit_faster(hit, miss)
    return result


def grpc_sender(stub: Any, model: str, pb: Any) -> Send:
    """A Send over a bastion Inference stub: raw prompt, greedy, one output token."""

    async def send(prompt: str) -> Probe:
        request = pb.GenerateRequest(model=model, prompt=prompt, sampling=pb.SamplingParams(max_tokens=1))
        start = time.perf_counter()
        ttft: float | None = None
        usage = None
        async for msg in stub.Generate(request, timeout=600):
            if ttft is None:
                ttft = time.perf_counter() - start
            if msg.HasField("usage"):
                usage = msg.usage
        if ttft is None or usage is None:
            raise RuntimeError("the server ended the stream without a final message")
        return Probe(ttft, usage.cached_prompt_tokens, usage.prompt_tokens)

    return send


def needs_confirmation(across: AuditResult) -> bool:
    """Whether an across-tenants result calls for a second, independent audit before a verdict: a timing
    difference without cached tokens (which alone may be chance, at ``alpha``). Cached tokens are direct evidence
    and need none; no difference needs none."""
    return across.distinguishable and across.cached_in_hits == 0


def verdict(within: AuditResult, across: AuditResult, confirm: AuditResult | None = None) -> tuple[bool, str]:
    """(passed, one line): the audit must have power within a tenant and find nothing across tenants.

    Cached tokens in a probe's hits are direct evidence: LEAK. A timing difference alone is a test at ``alpha``,
    which a clean server fails by chance once in 1/alpha runs; ``confirm`` is an independent second across-tenants
    audit (fresh prompts), run when the first found a difference: LEAK only when it finds one too (a chance
    alarm then comes once in about 1/alpha**2 runs; a real cache leak separates hits from misses in both).
    ``confirm`` is accepted only where :func:`needs_confirmation` asks for it (``ValueError`` otherwise)."""
    if confirm is not None and not needs_confirmation(across):
        raise ValueError("confirm: a second audit is only run after a timing difference without cached tokens")
    if not within.distinguishable:
        return False, (
            f"inconclusive: the audit did not detect the cache within one tenant (p={within.p_value:.3g}); "
            "use longer prompts or more samples"
        )
    runs = [across] + ([confirm] if confirm is not None else [])
    cached = max(r.cached_in_hits for r in runs)
    if cached > 0:
        return False, f"LEAK: another tenant's cached prompt tokens were served to the probe ({cached} tokens)"
    if across.distinguishable and (confirm is None or confirm.distinguishable):
        ps = ", confirmed p=".join(f"{r.p_value:.3g}" for r in runs)
        return False, f"LEAK: another tenant's cache is observable by timing (p={ps})"
    found = (
        f"; a first timing difference (p={across.p_value:.3g}) was not reproduced by a second audit "
        f"(p={confirm.p_value:.3g})"
        if across.distinguishable and confirm is not None
        else f" p={across.p_value:.3g}"
    )
    return True, (
        f"isolated: within a tenant p={within.p_value:.3g} (cache detected), across tenants{found}, "
        "with 0 cached tokens"
    )


__all__ = ["AuditResult", "Probe", "auc_hit_faster", "grpc_sender", "needs_confirmation", "run_audit", "verdict"]
