#!/usr/bin/env python3
"""What tenant isolation costs inside the EngineCore, each figure against its anchor in the same run.

1. Block hashing, ns per prompt token: bastion's request block hasher (keyed, typed BLAKE3 in Rust,
   bastion.engine.vllm.block_hasher) against vLLM 0.32's default (SHA-256 over pickled tuples), both through
   vLLM's own Request objects, same prompts. Goal: >= 5x faster.
2. Scheduler step overhead with per-tenant KV budgets on vs off (bastion.engine.vllm.scheduler.TenantScheduler
   vs vLLM's Scheduler) at 64+ concurrent requests, no model: the scheduler alone. Goal: <= 2%.
3. Prefix hit rate of one tenant on a shared-prefix workload, partitioned vs vLLM unpartitioned, through the
   real KV cache manager. Goal: >= 0.98x. And N tenants sharing a declared public system prompt vs
   per-tenant partitions: prefill tokens computed (what drives time to first token).

    .venv/bin/python benchmarks/isolation_bench.py --quick   # CI
    .venv/bin/python benchmarks/isolation_bench.py

Writes benchmarks/results/isolation_bench[-quick].json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402 - after the sys.path insert above

BLOCK = 16


def _tag(tenant: int, public: int = 0) -> str:
    from bastion.isolation.tag import PartitionTag

    return PartitionTag(f"{tenant:064x}", public).encode()


def bench_hashing(n_requests: int, prompt_tokens: int, repeats: int, block: int = BLOCK) -> dict[str, Any]:
    """The ≥ 5x goal is stated for block size 16 (vLLM's GPU default); other sizes are reported without it."""
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    from bastion.engine.vllm.block_hasher import make_request_block_hasher
    from bastion.native import BlockKeyer

    sha = get_hash_fn_by_name("sha256")
    init_none_hash(sha)
    hashers = {
        "vllm_sha256": get_request_block_hasher(block, sha),
        "bastion_keyed_blake3": make_request_block_hasher(block, BlockKeyer(bytes(range(32)))),
    }
    rng = random.Random(0)
    prompts = [[rng.randrange(49152) for _ in range(prompt_tokens)] for _ in range(n_requests)]
    sp = SamplingParams(max_tokens=1)
    # Hashers alternate in random order, CPU time, the per-round ratio's median (this is a shared VM).
    order = random.Random(1)
    ns: dict[str, list[float]] = {k: [] for k in hashers}
    for _ in range(repeats):
        for name in order.sample(list(hashers), len(hashers)):
            hasher = hashers[name]
            t0 = time.process_time_ns()
            for i, p in enumerate(prompts):
                Request(f"r{i}", p, sp, None, cache_salt=_tag(i % 8), block_hasher=hasher)
            ns[name].append((time.process_time_ns() - t0) / (n_requests * prompt_tokens))
    # Construction without hashing, subtracted from both (it is not hashing).
    base = []
    for _ in range(repeats):
        t0 = time.process_time_ns()
        for i, p in enumerate(prompts):
            Request(f"r{i}", p, sp, None, cache_salt=_tag(i % 8))
        base.append((time.process_time_ns() - t0) / (n_requests * prompt_tokens))
    b = statistics.median(base)
    vllm_ns = statistics.median(ns["vllm_sha256"]) - b
    ours_ns = statistics.median(ns["bastion_keyed_blake3"]) - b
    ratios = sorted(
        (v - b) / (o - b) for v, o in zip(ns["vllm_sha256"], ns["bastion_keyed_blake3"], strict=True) if o > b
    )
    return {
        "requests": n_requests,
        "prompt_tokens": prompt_tokens,
        "block_size": block,
        "repeats": repeats,
        "vllm_sha256_ns_per_token": round(vllm_ns, 2),
        "bastion_ns_per_token": round(ours_ns, 2),
        "speedup": round(statistics.median(ratios), 2) if ratios else None,
        "speedup_per_round_min_max": [round(ratios[0], 2), round(ratios[-1], 2)] if ratios else None,
        **(
            {"goal_speedup": 5.0, "goal_met": bool(ratios) and statistics.median(ratios) >= 5.0}
            if block == BLOCK
            else {}
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs")
    ap.add_argument("--smoke", action="store_true", help="tiny runs: the program works (CI's smoke test)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/isolation_bench[-quick].json)")
    args = ap.parse_args()
    q = args.quick or args.smoke
    mode = "smoke" if args.smoke else "quick" if q else "full"
    # requests hashed, hashing repeats, scheduler steps, prefix-sharing requests
    n_req, repeats, steps, n_prefix = {
        "smoke": (8, 1, 100, 16),
        "quick": (64, 5, 400, 48),
        "full": (256, 9, 1500, 128),
    }[mode]
    result: dict[str, Any] = {
        "benchmark": "isolation_bench",
        "quick": q,
        "mode": mode,
        "machine": common.machine_info(),
    }
    # Block size 16: vLLM's default on GPUs (the goal); 128: its CPU backend's.
    result["hashing"] = bench_hashing(n_requests=n_req, prompt_tokens=2048, repeats=repeats)
    print(json.dumps(result["hashing"]), flush=True)
    result["hashing_block_128"] = bench_hashing(
        n_requests=min(n_req, 64), prompt_tokens=2048, repeats=repeats, block=128
    )
    print(json.dumps(result["hashing_block_128"]), flush=True)
    try:
        from isolation_sched import bench_prefix_sharing, bench_scheduler  # the scheduler half
    except ImportError as exc:
        result["scheduler"] = {"error": f"not available: {exc}"}
    else:
        result["scheduler"] = bench_scheduler(steps=steps)
        print(json.dumps(result["scheduler"]), flush=True)
        result["prefix_sharing"] = bench_prefix_sharing(n=n_prefix)
        print(json.dumps(result["prefix_sharing"]), flush=True)
    common.save_report(result, args.out, HERE / "results" / f"isolation_bench{'-quick' if q else ''}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
