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
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _BastionStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self._sink = sink

        def record(
            self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
        ) -> None:
            self._sink.record(scheduler_stats)

        def log_engine_initialized(self) -> None:
            return None

    def factory(vllm_config: Any, engine_index: int = 0) -> StatLoggerBase:
        return _BastionStatLogger(vllm_config, engine_index)

    return factory
