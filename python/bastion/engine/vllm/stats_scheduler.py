"""The scheduler side of the engine's figures (``bastion.engine.vllm.figures``): a mixin over vLLM's scheduler
that writes them, and vLLM's two schedulers with it for an engine without tenant isolation (the tenant scheduler,
``bastion.engine.vllm.scheduler``, has it too). Runs in the EngineCore."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from bastion.engine.process import current
from bastion.engine.vllm.figures import stats_file
from bastion.files import atomic_write_text

log = logging.getLogger(__name__)

INTERVAL_S = 1.0


class EngineFigures:
    """Mixin over vLLM's ``Scheduler``: exports the engine's figures (module docstring). Subclasses with more
    to report override :meth:`_tenants`."""

    _figures_model: str
    _figures_file: Path | None
    _figures_due: float
    _figures_idle: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        directory = current().stats_dir
        name = getattr(self.vllm_config.model_config, "served_model_name", None) or "model"  # type: ignore[attr-defined]
        if isinstance(name, list):  # vLLM takes several names; bastion gives one
            name = name[0]
        self._figures_model = str(name)
        self._figures_file = stats_file(directory, self._figures_model) if directory else None
        self._figures_due = 0.0
        self._figures_idle = False  # the file last written says the engine is idle

    def _tenants(self) -> dict[str, dict[str, int]] | None:
        return None

    def engine_figures(self) -> dict[str, Any]:
        running, waiting = self.get_request_counts()  # type: ignore[attr-defined]
        deferred = len(getattr(self, "deferred_waiting", ()))
        figures: dict[str, Any] = {
            "model": self._figures_model,
            "running": int(running),
            "waiting": max(0, int(waiting) - deferred),
            "kv_usage": float(self.get_kv_cache_usage()),  # type: ignore[attr-defined]
        }
        tenants = self._tenants()
        if tenants is not None:
            figures["tenants"] = tenants
        return figures

    def _export_figures(self) -> None:
        """After a step or an abort: when a second has passed, or the engine just ran out of work."""
        if self._figures_file is None:
            return
        now = time.monotonic()
        idle = not self.has_unfinished_requests()  # type: ignore[attr-defined]
        if now < self._figures_due and not (idle and not self._figures_idle):
            return
        self._figures_due = now + INTERVAL_S
        try:
            atomic_write_text(self._figures_file, json.dumps(self.engine_figures()), mode=0o644)
        except OSError as exc:  # metrics only: never stops scheduling (an idle state not written is tried again)
            log.warning("cannot write the engine's figures (%s)", exc.strerror)
            return
        self._figures_idle = idle

    def update_from_output(self, *args: Any, **kwargs: Any) -> Any:
        outputs = super().update_from_output(*args, **kwargs)  # type: ignore[misc]
        self._export_figures()
        return outputs

    def finish_requests(self, *args: Any, **kwargs: Any) -> Any:
        result = super().finish_requests(*args, **kwargs)  # type: ignore[misc]
        self._export_figures()
        return result


class StatsScheduler(EngineFigures, Scheduler):
    """vLLM's scheduler, exporting the engine's figures (no tenant isolation)."""


class AsyncStatsScheduler(EngineFigures, AsyncScheduler):
    """vLLM's async scheduler, exporting the engine's figures (no tenant isolation)."""
