"""Engine statistics: a vLLM stat logger that keeps the latest scheduler figures for bastion's metrics."""

from __future__ import annotations

import threading
from typing import Any

from bastion.engine.protocol import EngineStats


class StatsSink:
    """Latest scheduler stats, written by vLLM's output handler, read by the metrics exporter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._waiting = 0
        self._kv_usage = 0.0
        self._prefix_queries = 0
        self._prefix_hits = 0

    def record(self, scheduler_stats: Any) -> None:
        if scheduler_stats is None:
            return
        with self._lock:
            self._running = int(scheduler_stats.num_running_reqs)
            self._waiting = int(scheduler_stats.num_waiting_reqs)
            self._kv_usage = float(scheduler_stats.kv_cache_usage)
            pcs = getattr(scheduler_stats, "prefix_cache_stats", None)
            if pcs is not None:
                self._prefix_queries += int(getattr(pcs, "queries", 0))
                self._prefix_hits += int(getattr(pcs, "hits", 0))

    def snapshot(self, unfinished: int) -> EngineStats:
        with self._lock:
            # running/waiting are the scheduler's figures at its latest step (they go stale while the
            # engine is idle); unfinished is the front end's live count of requests not yet finished.
            return EngineStats(
                running=self._running,
                waiting=self._waiting,
                kv_usage=self._kv_usage,
                extra={
                    "unfinished": float(unfinished),
                    "prefix_cache_queries": float(self._prefix_queries),
                    "prefix_cache_hits": float(self._prefix_hits),
                },
            )


def make_stat_logger_factory(sink: StatsSink) -> Any:
    """The stat logger class bastion gives AsyncLLM: it keeps the scheduler's figures in ``sink``.

    vLLM's StatLoggerManager adds its own PrometheusStatLogger unless one of the given loggers is one, and that
    logger records hundreds of series on every engine step into prometheus_client's global registry, which
    bastion never exports (its metrics have their own registry): front-end CPU for nothing, about 8 % of the
    event loop's samples at concurrency 1 (benchmarks/README.md). So bastion's logger *is* a PrometheusStatLogger
    (vLLM then adds none) that is never initialised as one: every method is overridden
    (tests/engine/vllm/test_vllm_stat_logger.py fails if a vLLM upgrade adds one it would inherit)."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    class _BastionStatLogger(PrometheusStatLogger):
        def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
            self._sink = sink  # PrometheusStatLogger.__init__ is not called: it would create vLLM's series

        def record(
            self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
        ) -> None:
            self._sink.record(scheduler_stats)

        def record_admission_rejection(self, reason: str) -> None:
            return None

        def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
            return None

        def log(self) -> None:
            return None

        def log_engine_initialized(self) -> None:
            return None

        def log_metrics_info(self, type: str, config_obj: Any) -> None:
            return None

    return _BastionStatLogger
