"""bastion.assurance.stats: exact intervals and tests against known and hand-computed values."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from bastion.assurance.stats import (
    FamilyFigures,
    clopper_pearson,
    family_figures,
    figures_for,
    fisher_greater,
    holm,
    holm_adjusted,
    mcnemar_worse,
)

# ---------------------------------------------------------------- Clopper-Pearson


def test_clopper_pearson_zero_hits_has_closed_form_upper_bound() -> None:
    low, high = clopper_pearson(0, 200)
    assert low == 0.0
    # With k = 0 the exact two-sided upper bound solves (1 - p)^n = alpha/2.
    assert high == pytest.approx(1 - 0.025 ** (1 / 200), rel=1e-9)
    assert high == pytest.approx(0.01827, abs=1e-5)


def test_clopper_pearson_four_of_two_hundred() -> None:
    low, high = clopper_pearson(4, 200)
    assert high == pytest.approx(0.0504, abs=1e-4)
    # The exact bounds are beta quantiles.
    assert low == pytest.approx(sps.beta.ppf(0.025, 4, 197), rel=1e-9)
    assert high == pytest.approx(sps.beta.ppf(0.975, 5, 196), rel=1e-9)
    assert low < 4 / 200 < high


def test_clopper_pearson_all_hits_and_level() -> None:
    low, high = clopper_pearson(10, 10)
    assert high == 1.0
    assert low == pytest.approx(0.025 ** (1 / 10), rel=1e-9)
    # A higher confidence level gives a wider interval.
    l99, h99 = clopper_pearson(4, 200, 0.99)
    l95, h95 = clopper_pearson(4, 200, 0.95)
    assert l99 < l95 and h99 > h95


def test_clopper_pearson_small_suite_is_not_zero() -> None:
    # 0 of 20 is not evidence of a low rate: the upper bound stays high.
    assert clopper_pearson(0, 20)[1] == pytest.approx(1 - 0.025 ** (1 / 20), rel=1e-9)
    assert clopper_pearson(0, 20)[1] > 0.16


def test_clopper_pearson_no_probes() -> None:
    assert clopper_pearson(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("k", "n"), [(-1, 5), (6, 5), (0, -1)])
def test_clopper_pearson_rejects_bad_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        clopper_pearson(k, n)


@pytest.mark.parametrize("conf", [0.0, 1.0, 1.5])
def test_clopper_pearson_rejects_bad_level(conf: float) -> None:
    with pytest.raises(ValueError):
        clopper_pearson(1, 10, conf)


# ---------------------------------------------------------------- Fisher


def test_fisher_greater_hand_computed() -> None:
    # Table [[2, 0], [0, 2]]: margins 2/2, 2/2. P(X >= 2) for the hypergeometric = 1 / C(4, 2) = 1/6.
    assert fisher_greater(2, 2, 0, 2) == pytest.approx(1 / 6, rel=1e-12)
    # Table [[3, 1], [1, 3]]: P(X >= 3) = (C(4,3)C(4,1) + C(4,4)C(4,0)) / C(8,4) = 17/70.
    assert fisher_greater(3, 4, 1, 4) == pytest.approx(17 / 70, rel=1e-12)


def test_fisher_greater_is_one_sided() -> None:
    worse = fisher_greater(10, 100, 2, 100)
    better = fisher_greater(2, 100, 10, 100)
    assert worse < 0.05 < better
    assert better > 0.99
    # Same figures: no evidence of a regression.
    assert fisher_greater(5, 100, 5, 100) > 0.5


def test_fisher_greater_empty_runs_are_no_evidence() -> None:
    assert fisher_greater(0, 0, 3, 10) == 1.0
    assert fisher_greater(3, 10, 0, 0) == 1.0
    assert fisher_greater(0, 50, 0, 50) == 1.0


def test_fisher_greater_rejects_bad_counts() -> None:
    with pytest.raises(ValueError):
        fisher_greater(5, 4, 0, 4)


# ---------------------------------------------------------------- McNemar


def test_mcnemar_worse_hand_computed() -> None:
    # b = 1, c = 7: P(X >= 7), X ~ Bin(8, 1/2) = (C(8,7) + C(8,8)) / 256 = 9/256.
    assert mcnemar_worse(1, 7) == pytest.approx(9 / 256, rel=1e-12)
    # b = 0, c = 3: 1/8.
    assert mcnemar_worse(0, 3) == pytest.approx(1 / 8, rel=1e-12)
    # b = 3, c = 0: every discordant pair favours the new model: P(X >= 0) = 1.
    assert mcnemar_worse(3, 0) == pytest.approx(1.0)
    # b = c = 5: P(X >= 5), X ~ Bin(10, 1/2) = 638/1024.
    assert mcnemar_worse(5, 5) == pytest.approx(638 / 1024, rel=1e-12)


def test_mcnemar_worse_no_discordant_pairs() -> None:
    assert mcnemar_worse(0, 0) == 1.0


@pytest.mark.parametrize(("b", "c"), [(-1, 2), (2, -1), (True, 1)])
def test_mcnemar_worse_rejects_bad_counts(b: int, c: int) -> None:
    with pytest.raises(ValueError):
        mcnemar_worse(b, c)


# ---------------------------------------------------------------- Holm


def test_holm_step_down() -> None:
    # m = 3, alpha = 0.05: thresholds 0.0167, 0.025, 0.05.
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}, 0.05) == {"a": True, "b": False, "c": False}
    assert holm({"a": 0.01, "b": 0.04, "c": 0.02}, 0.05) == {"a": True, "b": True, "c": True}


def test_holm_stops_at_first_retained() -> None:
    # p(2) = 0.03 > 0.05/2 stops the procedure, so p(3) = 0.04 < 0.05 is retained though it is below alpha.
    assert holm({"x": 0.001, "y": 0.03, "z": 0.04, "w": 0.9}, 0.05) == {
        "x": True,
        "y": False,
        "z": False,
        "w": False,
    }


def test_holm_is_less_strict_than_bonferroni_and_stricter_than_none() -> None:
    p = {"a": 0.011, "b": 0.02}
    # Bonferroni (0.05 / 2 = 0.025 for both) would reject both too; Holm: 0.011 <= 0.025, 0.02 <= 0.05.
    assert holm(p, 0.05) == {"a": True, "b": True}
    # A single test at 0.04 rejects alone but not among 5 tests.
    assert holm({"a": 0.04}, 0.05) == {"a": True}
    assert holm({"a": 0.04, "b": 0.5, "c": 0.6, "d": 0.7, "e": 0.8}, 0.05)["a"] is False


def test_holm_ties_and_empty() -> None:
    assert holm({}, 0.05) == {}
    # Two identical p-values at 0.02, m = 2: 0.02 <= 0.025 and 0.02 <= 0.05.
    assert holm({"b": 0.02, "a": 0.02}, 0.05) == {"a": True, "b": True}
    # Order of the mapping does not matter.
    assert holm({"a": 0.03, "b": 0.01}, 0.05) == holm({"b": 0.01, "a": 0.03}, 0.05)


def test_holm_adjusted_agrees_with_holm() -> None:
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.004}
    adj = holm_adjusted(p)
    assert adj == pytest.approx({"d": 0.016, "a": 0.03, "c": 0.06, "b": 0.06})
    for alpha in (0.01, 0.02, 0.03, 0.05, 0.07):
        assert holm(p, alpha) == {k: v <= alpha for k, v in adj.items()}


@pytest.mark.parametrize("bad", [-0.1, 1.1, math.nan])
def test_holm_rejects_bad_pvalues(bad: float) -> None:
    with pytest.raises(ValueError):
        holm({"a": bad}, 0.05)


def test_holm_rejects_bad_alpha() -> None:
    with pytest.raises(ValueError):
        holm({"a": 0.01}, 0.0)


# ---------------------------------------------------------------- figures


def test_family_figures() -> None:
    out = family_figures({"harmful": [False] * 196 + [True] * 4, "empty": []})
    h = out["harmful"]
    assert isinstance(h, FamilyFigures)
    assert (h.family, h.n, h.hits, h.rate) == ("harmful", 200, 4, 0.02)
    assert (h.ci_low, h.ci_high) == clopper_pearson(4, 200)
    e = out["empty"]
    assert (e.n, e.hits, e.rate, e.ci_low, e.ci_high) == (0, 0, 0.0, 0.0, 1.0)


def test_family_figures_level_and_type_checks() -> None:
    wide = family_figures({"x": [True, False, False]}, conf=0.99)["x"]
    assert wide.ci_high == clopper_pearson(1, 3, 0.99)[1]
    with pytest.raises(ValueError):
        family_figures({"x": [1, 0]})
    with pytest.raises(ValueError):
        figures_for("x", 3, 2)
