"""The statistics of a model security evaluation: confidence bounds, regression tests, multiplicity.

Every probe of a family ends in a *hit* (a bad outcome: the attack succeeded, a benign prompt was
refused, a golden answer was missing) or a pass. A family's figures are its probe count ``n``, its hit
count ``k`` and the hit rate ``k / n``. Suites are small (tens to hundreds of probes per family), so
every figure here is exact, never a normal approximation:

- **Clopper–Pearson interval** (:func:`clopper_pearson`): the exact two-sided binomial confidence
  interval. It is conservative (coverage is at least ``conf``), and it is what makes "0 hits out of 200"
  mean "the true rate is below 1.8 % with 95 % confidence", not "the true rate is 0". The go-live gate
  compares its *upper* bound with the policy's limits, so a small suite cannot pass a tight limit by
  luck: with 0/20 the upper bound is still 0.168.
- **Fisher's exact test, one-sided** (:func:`fisher_greater`): is the new model's hit rate greater than
  the baseline's? Used when the two runs are independent samples (different probe draws or seeds).
- **McNemar's exact test, one-sided** (:func:`mcnemar_worse`): the same question when both models
  answered *identical* probes. Only the discordant pairs carry information: ``b`` probes that the base
  hit and the new model passed, ``c`` probes that the base passed and the new model hit. Under H0
  (no difference) each discordant pair is a fair coin, so the p-value is ``P(X >= c)`` for
  ``X ~ Binomial(b + c, 1/2)``. Pairing removes the between-probe variance and is more powerful than
  Fisher on the same data.
- **Holm–Bonferroni** (:func:`holm`): one regression test per family means several tests at once; Holm's
  step-down procedure keeps the family-wise error rate (the chance that *any* family is flagged as a
  regression when none regressed) at ``alpha``, and is uniformly more powerful than plain Bonferroni.
  Sort the m p-values ascending, ``p(1) <= ... <= p(m)``; reject ``H(i)`` while
  ``p(i) <= alpha / (m - i + 1)``; at the first ``i`` where that fails, stop and retain it and all
  later ones. :func:`holm_adjusted` gives the equivalent adjusted p-values (reject iff adjusted <= alpha)
  for reports.

All functions validate counts (``0 <= k <= n``) and raise ``ValueError`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats


def _check_counts(k: int, n: int, what: str = "") -> None:
    label = f"{what}: " if what else ""
    if isinstance(k, bool) or isinstance(n, bool) or not isinstance(k, int) or not isinstance(n, int):
        raise ValueError(f"{label}counts must be integers")
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"{label}need 0 <= hits <= n (got {k} of {n})")


def _check_conf(conf: float) -> None:
    if not (0.0 < conf < 1.0):
        raise ValueError("confidence level must be in (0, 1)")


def clopper_pearson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """The exact two-sided ``conf`` confidence interval ``(low, high)`` for the rate of ``k`` hits in ``n``.

    ``n == 0`` (no probes) carries no information: ``(0.0, 1.0)``.
    """
    _check_counts(k, n)
    _check_conf(conf)
    if n == 0:
        return 0.0, 1.0
    ci = _scipy_stats.binomtest(k, n).proportion_ci(confidence_level=conf, method="exact")
    return float(ci.low), float(ci.high)


def fisher_greater(k_new: int, n_new: int, k_base: int, n_base: int) -> float:
    """One-sided Fisher exact p-value for H1 "the new hit rate is greater than the base hit rate".

    The 2x2 table is ``[[k_new, n_new - k_new], [k_base, n_base - k_base]]``; the alternative is an odds
    ratio above 1. A run without probes (``n_new == 0`` or ``n_base == 0``) is no evidence: 1.0.
    """
    _check_counts(k_new, n_new, "new")
    _check_counts(k_base, n_base, "base")
    if n_new == 0 or n_base == 0:
        return 1.0
    table = [[k_new, n_new - k_new], [k_base, n_base - k_base]]
    return float(_scipy_stats.fisher_exact(table, alternative="greater").pvalue)


def mcnemar_worse(b: int, c: int) -> float:
    """Exact one-sided McNemar p-value for H1 "the new model is worse" on paired probes.

    ``b``: probes the base model hit and the new model passed; ``c``: the base passed and the new hit.
    The p-value is ``P(X >= c)``, ``X ~ Binomial(b + c, 0.5)``; no discordant pair (``b + c == 0``): 1.0.
    """
    for count in (b, c):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError("discordant pairs: counts must be non-negative integers")
    if b + c == 0:
        return 1.0
    return float(_scipy_stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue)


def _sorted_pvalues(pvalues: Mapping[str, float]) -> list[tuple[str, float]]:
    for name, p in pvalues.items():
        if not isinstance(p, (int, float)) or math.isnan(p) or not (0.0 <= p <= 1.0):
            raise ValueError(f"{name}: a p-value must be a number in [0, 1]")
    # Ties are broken by name so the outcome never depends on dict order.
    return sorted(((name, float(p)) for name, p in pvalues.items()), key=lambda t: (t[1], t[0]))


def holm(pvalues: Mapping[str, float], alpha: float) -> dict[str, bool]:
    """Holm–Bonferroni step-down: ``{name: rejected}`` with the family-wise error rate kept at ``alpha``."""
    if not (0.0 < alpha < 1.0):
        raise ValueError("alpha must be in (0, 1)")
    ordered = _sorted_pvalues(pvalues)
    m = len(ordered)
    rejected = dict.fromkeys(pvalues, False)
    for i, (name, p) in enumerate(ordered):
        if p > alpha / (m - i):
            break  # step-down: this one and every larger p-value are retained
        rejected[name] = True
    return rejected


def holm_adjusted(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values: ``max_{j <= i} min(1, (m - j + 1) p(j))``; rejected at alpha iff <= alpha."""
    ordered = _sorted_pvalues(pvalues)
    m = len(ordered)
    out: dict[str, float] = {}
    running = 0.0
    for i, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - i) * p))
        out[name] = running
    return {name: out[name] for name in pvalues}


@dataclass(frozen=True, slots=True)
class FamilyFigures:
    """One probe family's result: ``hits`` of ``n`` probes, the rate and its exact confidence interval."""

    family: str
    n: int
    hits: int
    rate: float
    ci_low: float
    ci_high: float


def figures_for(family: str, hits: int, n: int, conf: float = 0.95) -> FamilyFigures:
    """The figures of one family from its counts."""
    _check_counts(hits, n, family)
    low, high = clopper_pearson(hits, n, conf)
    return FamilyFigures(family=family, n=n, hits=hits, rate=(hits / n if n else 0.0), ci_low=low, ci_high=high)


def family_figures(outcomes: Mapping[str, Sequence[bool]], conf: float = 0.95) -> dict[str, FamilyFigures]:
    """Per family (``family -> [hit, ...]``): its :class:`FamilyFigures` at confidence ``conf``."""
    out: dict[str, FamilyFigures] = {}
    for family, hits in outcomes.items():
        flags = list(hits)
        if any(not isinstance(h, bool) for h in flags):
            raise ValueError(f"{family}: outcomes must be booleans (True = hit)")
        out[family] = figures_for(family, sum(flags), len(flags), conf)
    return out
