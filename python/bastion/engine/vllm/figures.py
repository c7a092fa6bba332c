"""The engine's figures for the server's metrics, written by the EngineCore's scheduler, with vLLM's stats off.

With any stat logger installed, vLLM computes its statistics on every step: the scheduler builds a
``SchedulerStats`` (prefix-cache counters, per-request events) that travels with every output message, and the
front end builds ``IterationStats`` from every output. bastion exported three figures of all that. Issue 19
measured what the rest cost (benchmarks/README.md, "vLLM's statistics, off"): a bare ``AsyncLLM`` spent 18 % (one
request) and 23 % (sixteen) less front-end CPU per token without them; bastion's gRPC front end 6–28 % less.
So bastion runs vLLM with its stats off, and the scheduler (``bastion.engine.vllm.stats_scheduler``: vLLM's
own with a mixin, or the tenant scheduler under isolation) writes those figures itself to
``<stats dir>/<model>.json`` (the name percent-encoded):

    {"model": str, "running": int, "waiting": int, "kv_usage": float, "tenants": {tenant key: {...}}}

``running`` and ``waiting`` are vLLM's own counts (``get_request_counts``; waiting without the deferred ones, as
vLLM reports it), ``kv_usage`` its fraction of KV blocks in use (``get_kv_cache_usage``), ``tenants`` the tenant KV
ledger's snapshot (the tenant scheduler only; ``bastion.isolation.kv_metrics`` reads it). The file is written,
then renamed into place, after a step at most once a second, and at once when the engine runs out of work (after a
step or an abort), so an idle engine never reports the figures of its last busy step. The server reads it when
scraped or asked for routing stats (``VllmEngine.stats``: :func:`read_figures`; this module imports no vLLM).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from urllib.parse import quote

from bastion.engine.protocol import EngineStats

log = logging.getLogger(__name__)

_MAX_FILE_BYTES = 1 << 20  # the tenant ledger of a few thousand tenants; a bigger file is not one of ours


def stats_file(directory: Path, model: str) -> Path:
    """``<directory>/<model>.json``, the name percent-encoded: a name with "/" stays inside the directory."""
    return directory / f"{quote(model, safe='')}.json"


def read_figures(path: Path | None, unfinished: int) -> EngineStats:
    """The figures the engine last wrote; zeros (and a debug line) when there are none yet or they do not parse.
    ``unfinished``: the front end's live count of requests not yet finished."""
    stats = EngineStats(extra={"unfinished": float(unfinished)})
    if path is None:
        return stats
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read(_MAX_FILE_BYTES + 1)[:_MAX_FILE_BYTES])
        running, waiting, usage = raw["running"], raw["waiting"], raw["kv_usage"]
        if not all(type(v) is int and v >= 0 for v in (running, waiting)):
            raise ValueError("running and waiting must be counts")
        if not isinstance(usage, (int, float)) or not math.isfinite(usage) or not 0 <= usage <= 1:
            raise ValueError("kv_usage must be a fraction")
    except FileNotFoundError:
        return stats
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("engine figures unreadable: %s (%s)", path.name, exc)
        return stats
    stats.running, stats.waiting, stats.kv_usage = running, waiting, float(usage)
    return stats
