"""bastion's vLLM stat logger (bastion.engine.vllm.stats): it feeds bastion's metrics and takes the place of vLLM's
Prometheus logger, whose series would go to a registry bastion never exports (CPU on every engine step for
nothing)."""

from __future__ import annotations

import inspect

from prometheus_client import REGISTRY

from bastion.engine.vllm.stats import StatsSink, make_stat_logger_factory


def _vllm_series() -> set[str]:
    return {name for name in REGISTRY._names_to_collectors if name.startswith("vllm:")}


def test_vllm_adds_no_prometheus_logger_beside_bastions() -> None:
    from vllm.config import VllmConfig
    from vllm.v1.metrics.loggers import StatLoggerManager
    from vllm.v1.metrics.stats import PrefixCacheStats, SchedulerStats

    sink = StatsSink()
    before = _vllm_series()
    # As AsyncLLM builds it with bastion's logger and disable_log_stats=True (no default loggers).
    manager = StatLoggerManager(
        VllmConfig(),
        engine_idxs=[0],
        custom_stat_loggers=[make_stat_logger_factory(sink)],
        enable_default_loggers=False,
    )
    names = [type(lg).__name__ for lg in manager.stat_loggers]
    assert names == ["_BastionStatLogger"], names  # not vLLM's PrometheusStatLogger as well
    assert _vllm_series() == before  # no vllm:* series were registered

    stats = SchedulerStats(num_running_reqs=3, num_waiting_reqs=2, kv_cache_usage=0.25)
    stats.prefix_cache_stats = PrefixCacheStats(queries=10, hits=4)
    manager.record(stats, None)
    manager.record(None, None)  # an iteration without scheduler stats changes nothing
    manager.log()
    manager.log_engine_initialized()
    manager.record_sleep_state(1, 1)
    manager.record_admission_rejection("queue full")
    snap = sink.snapshot(unfinished=5)
    assert (snap.running, snap.waiting, snap.kv_usage) == (3, 2, 0.25)
    assert snap.extra == {"unfinished": 5.0, "prefix_cache_queries": 10.0, "prefix_cache_hits": 4.0}


def test_every_method_of_vllms_prometheus_logger_is_overridden() -> None:
    """bastion's logger is a PrometheusStatLogger that is never initialised as one: a method it inherits would
    read state that does not exist (an AttributeError in vLLM's output handler). A vLLM upgrade that adds one
    fails here."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    cls = make_stat_logger_factory(StatsSink())
    assert isinstance(cls, type) and issubclass(cls, PrometheusStatLogger)
    inherited = [
        name
        for name, member in inspect.getmembers(PrometheusStatLogger, inspect.isfunction)
        if not name.startswith("_") and name not in cls.__dict__
    ]
    assert inherited == []
