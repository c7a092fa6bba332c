#!/usr/bin/env python3
"""Time to SERVING: bastion (security on) against vLLM's OpenAI server, the same model and engine settings, the
fast-start setting on both (bastion's ``model.fast_start``; vLLM ``--enforce-eager`` with
``VLLM_ENABLE_V1_MULTIPROCESSING=0``), started alternately several times in one run, never two at once.

Per start: process start -> ready (bastion: health SERVING, then ListModels; vLLM: /health 200, then /v1/models),
and -> the first completed request (one greedy prompt). Medians per server, the ratio bastion / vLLM with a 95 %
bootstrap interval (starts resampled per server). Goals (issue 19): bastion's median <= 60 s and <= 1.05x vLLM's.

    .venv/bin/python benchmarks/start_bench.py                 # 3 rounds, bastion and vllm
    .venv/bin/python benchmarks/start_bench.py --rounds 5
    .venv/bin/python benchmarks/start_bench.py --engine fake --servers bastion,bastion-open --rounds 1   # CI smoke

Writes benchmarks/results/start_bench.json (``--out`` to change). Exit status 0 when every start served, 1 when
one did not (the tail of its log is printed), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402 - after the sys.path insert above
import serve_bench  # noqa: E402 - after the sys.path insert above

SERVERS = ("bastion", "bastion-open", "bastion-http", "vllm")


async def one_start(name: str, cfg: serve_bench.BenchConfig, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    """Starts one server, waits until ready, sends one request, stops it (always)."""
    config: dict[str, Any] = {}
    server, client = serve_bench.build_server(name, cfg, args, logdir, config)
    out: dict[str, Any] = {"server": name}
    try:
        server.start()
        await client.wait_ready(server, cfg.start_timeout_s)
        out["start_to_ready_s"] = round(time.monotonic() - server.started_at, 2)
        result = await client.send("Warmup 00000. Say hello.")
        if not result.ok:
            raise RuntimeError(f"{name}: the first request failed: {result.error}")
        out["start_to_first_response_s"] = round(time.monotonic() - server.started_at, 2)
    except Exception:
        print(f"--- last lines of {name}'s log ({server.log_path}) ---\n{server.tail()}", file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        t0 = time.monotonic()
        await asyncio.to_thread(server.stop)
        out["stop_s"] = round(time.monotonic() - t0, 2)
    print(
        f"[{name}] ready {out['start_to_ready_s']} s, first response {out['start_to_first_response_s']} s", flush=True
    )
    return out


def summarize(starts: dict[str, list[dict[str, Any]]], a: str, b: str, goal_s: float, goal_ratio: float) -> dict:
    """Medians per server and a / b with a bootstrap interval, for time to ready and to the first response."""
    out: dict[str, Any] = {"servers": {}, "ratio": {}}
    for name, runs in starts.items():
        out["servers"][name] = {
            key: {"median": round(statistics.median(r[key] for r in runs), 2), "runs": [r[key] for r in runs]}
            for key in ("start_to_ready_s", "start_to_first_response_s")
        }
    if a in starts and b in starts:
        for key in ("start_to_ready_s", "start_to_first_response_s"):
            xs, ys = [r[key] for r in starts[a]], [r[key] for r in starts[b]]
            lo, hi = common.bootstrap_interval(lambda p, q: statistics.median(p) / statistics.median(q), xs, ys)
            out["ratio"][key] = {
                "point": round(statistics.median(xs) / statistics.median(ys), 4),
                "interval_95": [round(lo, 4), round(hi, 4)],
            }
        ready = out["servers"][a]["start_to_ready_s"]["median"]
        out["goal_met"] = {
            f"{a}_ready_le_{goal_s:g}_s": ready <= goal_s,
            f"ratio_le_{goal_ratio:g}": out["ratio"]["start_to_ready_s"]["point"] <= goal_ratio,
        }
    return out


async def amain(args: argparse.Namespace) -> int:
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if len(servers) != 2 or any(s not in SERVERS for s in servers):
        print(f"start_bench: --servers takes two of {', '.join(SERVERS)}", file=sys.stderr)
        return 2
    if args.engine == "fake" and "vllm" in servers:
        print("start_bench: --engine fake starts bastion's servers only", file=sys.stderr)
        return 2
    model_dir = serve_bench.resolve_model(args.model, args) if args.engine == "vllm" else "fake (no model)"
    cfg = serve_bench.BenchConfig(
        model_dir=model_dir,
        max_tokens=8,
        concurrency=(1,),
        requests={1: 1},
        warmup={1: 0},
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        kv_cache_gib=args.kv_cache_gib,
        seed=0,
        request_timeout_s=120.0,
        start_timeout_s=args.start_timeout,
        fast_start=not args.no_fast_start,
    )
    logdir = Path(tempfile.mkdtemp(prefix="start_bench."))
    report: dict[str, Any] = {
        "benchmark": "start_bench",
        "engine": args.engine,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine_info(),
        "versions": serve_bench.versions(),
        "config": {
            "model_dir": model_dir,
            "fast_start": cfg.fast_start,
            "max_model_len": cfg.max_model_len,
            "max_num_seqs": cfg.max_num_seqs,
            "rounds": args.rounds,
            "order": "alternating: round 0 starts the first server first, round 1 the second, ...",
            "ready": "bastion: grpc.health.v1 SERVING then ListModels; vLLM: /health 200 then /v1/models",
            "first_response": "start -> one greedy 8-token request completed",
        },
        "starts": [],
        "errors": [],
    }
    starts: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
    try:
        for rnd in range(args.rounds):
            for name in servers if rnd % 2 == 0 else servers[::-1]:
                try:
                    r = await one_start(name, cfg, args, logdir)
                except Exception as exc:  # noqa: BLE001 - recorded, with the log's tail
                    report["errors"].append(f"{name} (round {rnd}): {getattr(exc, 'reason', None) or exc}")
                    print(f"[{name}] FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                r["round"] = rnd
                report["starts"].append(r)
                starts[name].append(r)
    finally:
        if all(starts.values()):
            report["summary"] = summarize(starts, servers[0], servers[1], args.goal_s, args.goal_ratio)
        report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        report["machine"]["loadavg_at_end"] = list(os.getloadavg())
        out = Path(args.out) if args.out else HERE / "results" / "start_bench.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(report.get("summary"), indent=2))
        print(f"saved {out}; server logs: {logdir}")
    return 1 if report["errors"] else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="bastion,vllm", help="two servers, the ratio is first / second")
    p.add_argument("--rounds", type=int, default=3, help="starts per server (default 3)")
    p.add_argument("--model", default="default", help='model directory, or "default" (bastion\'s default model)')
    p.add_argument("--engine", choices=("vllm", "fake"), default="vllm", help="fake: the CI smoke (bastion only)")
    p.add_argument("--no-fast-start", action="store_true", help="the default engine path (torch.compile) instead")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--kv-cache-gib", type=int, default=1)
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--goal-s", type=float, default=60.0, help="goal: the first server's median time to ready")
    p.add_argument("--goal-ratio", type=float, default=1.05, help="goal: first / second median time to ready")
    p.add_argument("--out", help="JSON output (default benchmarks/results/start_bench.json)")
    # What serve_bench.build_server reads of its own options, at their defaults.
    p.set_defaults(bastion_cmd=None, bastion_listen="tcp", vllm_extra_args="")
    for opt in ("api_key_file", "ca_file", "client_cert", "client_key", "server_name"):
        p.set_defaults(**{f"bastion_{opt}": None})
    p.set_defaults(bastion_api_key_header="authorization")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
