"""Security on vs off on the real engine in alternating rounds, with bootstrap intervals (issue 19, item 3).

``serve_bench.py --servers bastion,bastion-open[,bastion-tls] --security-rounds N``: the bastion servers — security
on (mutual TLS, JWT, tenancy, audit), the pass-through ``bastion-open`` and, when named, the same pass-through behind
the same mutual TLS (``bastion-tls``: the layer split into TLS and the controls above it) — run at once, each over
its own engine with the same settings. Each round sends every level to each in turn, the order reversed every other
round so that drift on a shared machine hits them alike, with the round's own prompts (distinct from every other round's from their first
tokens: no prefix-cache hit across rounds). Per level the report gives the medians over the rounds, the ratio of
the medians, 95 % bootstrap intervals (``common.add_on_off_intervals``) and whether both servers generated the same
text for the same prompt (greedy decoding, the same engine settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

# The pieces of serve_bench this runs with (passed in: serve_bench runs as a script, so it is not importable here).
RunLevel = Callable[..., Any]
MakeWorkload = Callable[..., Any]


def _median(values: list[Any], digits: int = 3) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), digits) if known else None


def median_level(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One level over the rounds: medians of each round's figures (the fields serve_bench prints), the sums of
    requests and failures, and every round's own summary under ``runs``."""
    return {
        "concurrency": runs[0]["concurrency"],
        "rounds": len(runs),
        "requests": sum(r["requests"] for r in runs),
        "ok": sum(r["ok"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "warmup_errors": sum(r["warmup_errors"] for r in runs),
        "output_tok_s": _median([r["output_tok_s"] for r in runs]),
        "requests_s": _median([r["requests_s"] for r in runs], 4),
        "ttft_ms": {q: _median([r["ttft_ms"][q] for r in runs]) for q in ("p50", "p99")},
        "itl_ms": {q: _median([r["itl_ms"][q] for r in runs]) for q in ("p50", "p99")},
        "frontend_cpu_s_per_1000_tokens": _median([r.get("frontend_cpu_s_per_1000_tokens") for r in runs], 4),
        "runs": runs,
    }


async def bench_rounds(
    pair: dict[str, tuple[Any, Any]],
    cfg: Any,
    rounds: int,
    make_workload: MakeWorkload,
    run_level: RunLevel,
    started: list[Any],
) -> tuple[dict[str, Any], dict[str, dict[str, str]], list[str]]:
    """Starts the servers of ``pair`` (name → (server, client)), runs ``rounds`` alternating rounds of every level,
    always stops them all. Returns (per server: its median levels, per server: prompt → text, errors)."""
    names = list(pair)
    out: dict[str, Any] = {name: {"levels": []} for name in names}
    texts: dict[str, dict[str, str]] = {name: {} for name in names}
    errors: list[str] = []
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in cfg.concurrency} for name in names}
    try:
        for name, (server, client) in pair.items():
            started.append(server)
            server.start()
            await client.wait_ready(server, cfg.start_timeout_s)
            out[name]["start_to_ready_s"] = round(time.monotonic() - server.started_at, 1)
            out[name]["served_model_name"] = client.model
            print(f"[{name}] ready in {out[name]['start_to_ready_s']} s (model {client.model!r})", flush=True)
        for r in range(rounds):
            work = make_workload(cfg, r)
            for c in cfg.concurrency:
                for name in names if r % 2 == 0 else names[::-1]:
                    server, client = pair[name]
                    summary, results = await run_level(client.send, work.warm[c], work.measured[c], c, server.pid)
                    summary["round"] = r
                    runs[name][c].append(summary)
                    if summary["errors"] or summary["warmup_errors"]:
                        errors.append(
                            f"{name} round {r} c={c}: {summary['errors']} failed requests, "
                            f"{summary['warmup_errors']} failed warm-ups: {summary['error_samples']}"
                        )
                    for prompt, res in zip(work.measured[c], results, strict=True):
                        if res.ok:
                            texts[name][prompt] = res.text
                    print(
                        f"[{name}] round {r + 1}/{rounds} c={c:<3} {summary['ok']}/{summary['requests']} ok  "
                        f"{summary['output_tok_s']} tok/s  TTFT p50 {summary['ttft_ms']['p50']} ms",
                        flush=True,
                    )
                    if server.exited() is not None:
                        raise RuntimeError(f"{name} exited with status {server.exited()} during round {r}")
        for name in names:
            out[name]["levels"] = [median_level(runs[name][c]) for c in cfg.concurrency]
    finally:
        for server, client in pair.values():
            with contextlib.suppress(Exception):
                await client.close()
            await asyncio.to_thread(server.stop)
    return out, texts, errors
