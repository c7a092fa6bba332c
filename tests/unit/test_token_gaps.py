"""The inter-token histogram's plain counters give the scrape the series the OpenTelemetry instrument gave."""

from __future__ import annotations

import threading

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from bastion.observability.metrics import _ITL_BUCKETS, Metrics
from bastion.observability.token_gaps import NAME, GapHistogram

# Below, on and between the bounds, past the last one, and zero.
GAPS = [0.0, 0.0004, 0.001, 0.0011, 0.0025, 0.03, 0.04, 0.3, 1.0, 2.5, 2.6, 60.0]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        if family.name == NAME
        for s in family.samples
    }


def _otel_samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What the OpenTelemetry instrument wrote on the scrape for GAPS (the series before this module)."""
    metrics = Metrics([InMemoryMetricReader()])  # an extra reader: the instrument path
    try:
        for i, gap in enumerate(GAPS):
            metrics.inter_token("m", gap, 1 + i % 3)
        return _samples(metrics.registry)
    finally:
        metrics.shutdown()


def test_the_counters_expose_what_the_opentelemetry_instrument_did() -> None:
    metrics = Metrics()
    try:
        for i, gap in enumerate(GAPS):
            metrics.inter_token("m", gap, 1 + i % 3)
        ours = _samples(metrics.registry)
    finally:
        metrics.shutdown()
    theirs = _otel_samples()
    assert ours.keys() == theirs.keys()
    assert len(ours) == len(_ITL_BUCKETS) + 3  # every bucket, +Inf, _count, _sum
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value), key
    assert ours[(NAME + "_count", (("model", "m"),))] == sum(1 + i % 3 for i in range(len(GAPS)))


def test_a_message_of_n_tokens_counts_n_gaps_without_a_cap() -> None:
    gaps = GapHistogram((0.01, 0.1))
    gaps.observe("m", 0.05, 40)
    gaps.observe("m", 0.01, 1)  # on a bound: in that bound's bucket
    gaps.observe("m", 0.5, 0)  # nothing
    registry = CollectorRegistry()
    registry.register(gaps)
    assert registry.get_sample_value(NAME + "_bucket", {"model": "m", "le": "0.01"}) == 1
    assert registry.get_sample_value(NAME + "_bucket", {"model": "m", "le": "0.1"}) == 41
    assert registry.get_sample_value(NAME + "_bucket", {"model": "m", "le": "+Inf"}) == 41
    assert registry.get_sample_value(NAME + "_count", {"model": "m"}) == 41
    assert registry.get_sample_value(NAME + "_sum", {"model": "m"}) == pytest.approx(2.01)
    assert b'model="m"' in generate_latest(registry)


def test_models_are_separate_series_and_nothing_is_exposed_before_a_gap() -> None:
    gaps = GapHistogram(_ITL_BUCKETS)
    registry = CollectorRegistry()
    registry.register(gaps)
    assert registry.get_sample_value(NAME + "_count", {"model": "a"}) is None
    gaps.observe("a", 0.02, 2)
    gaps.observe("b", 0.02, 3)
    assert registry.get_sample_value(NAME + "_count", {"model": "a"}) == 2
    assert registry.get_sample_value(NAME + "_count", {"model": "b"}) == 3


def test_a_scrape_beside_observing_threads_sees_whole_observations() -> None:
    gaps = GapHistogram((0.01,))
    registry = CollectorRegistry()
    registry.register(gaps)
    stop = threading.Event()

    def observe() -> None:
        while not stop.is_set():
            gaps.observe("m", 0.005, 2)

    threads = [threading.Thread(target=observe) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            s = _samples(registry)
            if not s:
                continue
            count = s[(NAME + "_count", (("model", "m"),))]
            assert count % 2 == 0
            assert s[(NAME + "_bucket", (("le", "0.01"), ("model", "m")))] == count
            assert s[(NAME + "_sum", (("model", "m"),))] == pytest.approx(count * 0.005)
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="bounds"):
        GapHistogram((0.1, 0.01))
