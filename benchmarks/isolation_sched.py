"""The scheduler half of benchmarks/isolation_bench.py: a real vLLM v1 scheduler without a model
(bastion.engine.vllm.offline): each step schedules, then reports one sampled token per request."""

from __future__ import annotations

import itertools
import random
import statistics
import time
from typing import Any

BLOCK = 16
PROMPT = 100  # prompt tokens of each decoding request
BUDGET = 8192  # tokens per step (max_num_batched_tokens)
_ids = itertools.count()


def _tag(tenant: int, public: int = 0, reserved: int = 0, cap: int = 0) -> str:
    from bastion.isolation.tag import PartitionTag

    return PartitionTag(f"{tenant + 1:064x}", public, reserved, cap).encode()


def _request(tokens: list[int], salt: str | None, hasher: Any, max_tokens: int) -> Any:
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request

    return Request(
        f"r{next(_ids)}",
        tokens,
        SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        None,
        cache_salt=salt,
        block_hasher=hasher,
    )


def _hashers() -> dict[str, Any]:
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash

    from bastion.engine.vllm.block_hasher import make_request_block_hasher
    from bastion.native import BlockKeyer

    sha = get_hash_fn_by_name("sha256")
    init_none_hash(sha)
    return {
        "vllm": get_request_block_hasher(BLOCK, sha),
        "bastion": make_request_block_hasher(BLOCK, BlockKeyer(bytes(range(32)))),
    }


def _decode_scheduler(budgets: bool, concurrency: int, hasher: Any, steps: int, bounded: bool = True) -> Any:
    """A scheduler with `concurrency` requests of 8 tenants, past their prefill, decoding. The pool holds every
    request's blocks to the end of the run, so the running count stays `concurrency` (no preemption), and the
    tenants' caps do not bind; `bounded=False` turns the tenant scheduler's per-step bound off (every allocation
    checked, as when a tenant is near its cap or the pool near full)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    from bastion.engine.vllm.offline import make_scheduler, step
    from bastion.engine.vllm.scheduler import TenantScheduler

    per_request = -(-(PROMPT + steps + 8) // BLOCK)  # blocks a request holds at the end of the run
    # The per-step bound's margin: a block per running request plus the step's token budget in blocks.
    margin = concurrency + BUDGET // BLOCK
    num_blocks = concurrency * per_request + margin + 64
    cap = 2 * (concurrency // 8 + 1) * per_request + margin
    s = make_scheduler(
        num_blocks,
        TenantScheduler if budgets else Scheduler,
        block_size=BLOCK,
        max_num_seqs=concurrency,
        max_num_batched_tokens=BUDGET,
        max_model_len=4096,
    )
    if budgets:
        s._bounded = bounded
    rng = random.Random(0)
    for i in range(concurrency):
        salt = _tag(i % 8, 0, 16, cap) if budgets else None
        s.add_request(_request([rng.randrange(49152) for _ in range(PROMPT)], salt, hasher, 10_000))
    for _ in range(3):
        step(s)
    return s


def bench_scheduler(steps: int) -> dict[str, Any]:
    """vLLM's scheduler and the tenant scheduler side by side, their steps interleaved in random order, so that
    the machine's noise (this is a shared VM) falls on both alike; CPU time per step, medians. Both sides hash
    blocks with bastion's hasher (the hashing comparison is its own benchmark), so the difference is the
    scheduler's. Two tenant variants per level: with the per-step bound (the tenants' caps and the pool are far:
    what a step costs in normal operation) and with every allocation checked (what a step costs when the bound
    does not hold: a tenant near its cap, or the pool near full)."""
    from bastion.engine.vllm.offline import step

    hasher = _hashers()["bastion"]
    out: dict[str, Any] = {
        "what": (
            "scheduler step (schedule + update_from_output), decode, 8 tenants, constant running count, "
            "CPU time, steps interleaved"
        ),
        "goal_overhead_pct": 2.0,
        "levels": [],
    }
    rng = random.Random(2)
    sides = ("vllm", "bounded", "checked")
    for c in (64, 128, 256):
        sched = {
            "vllm": _decode_scheduler(False, c, hasher, steps),
            "bounded": _decode_scheduler(True, c, hasher, steps),
            "checked": _decode_scheduler(True, c, hasher, steps, bounded=False),
        }
        times: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(steps):
            for side in rng.sample(sides, 3):
                t0 = time.process_time()
                step(sched[side])
                times[side].append(time.process_time() - t0)
        level: dict[str, Any] = {
            "concurrency": c,
            "steps": steps,
            "running_at_end": {k: len(v.running) for k, v in sched.items()},
            "unchecked_steps": sched["bounded"].unchecked_steps,
            "vllm_step_us": round(1e6 * statistics.median(times["vllm"]), 1),
        }
        for side in ("bounded", "checked"):
            # The overhead of each run of 100 interleaved steps; their median resists noise bursts.
            chunks = [
                100 * (sum(times[side][i : i + 100]) / sum(times["vllm"][i : i + 100]) - 1)
                for i in range(0, steps, 100)
            ]
            pct = statistics.median(chunks)
            level[side] = {
                "step_us": round(1e6 * statistics.median(times[side]), 1),
                "overhead_pct": round(pct, 2),
                "overhead_pct_total": round(100 * (sum(times[side]) / sum(times["vllm"]) - 1), 2),
                "overhead_pct_chunks_min_max": [round(min(chunks), 2), round(max(chunks), 2)],
            }
        level["overhead_pct"] = level["bounded"]["overhead_pct"]
        level["goal_met"] = level["overhead_pct"] <= 2.0
        out["levels"].append(level)
    return out


def _serve_prompts(s: Any, prompts: list[tuple[list[int], str | None]], hasher: Any) -> tuple[int, int]:
    """Runs the prompts through the scheduler in waves of 8; returns (prompt tokens, cached tokens)."""
    from bastion.engine.vllm.offline import step

    total = cached = 0
    for i in range(0, len(prompts), 8):
        reqs = [_request(t, salt, hasher, 4) for t, salt in prompts[i : i + 8]]
        for r in reqs:
            s.add_request(r)
        hits: dict[str, int] = {}
        while any(not r.is_finished() for r in reqs):
            for new in step(s).scheduled_new_reqs:  # computed tokens at admission = prefix-cache hit
                hits[new.req_id] = new.num_computed_tokens
        for r in reqs:
            total += r.num_prompt_tokens
            cached += hits[r.request_id]
    return total, cached


def bench_prefix_sharing(n: int) -> dict[str, Any]:
    from vllm.v1.core.sched.scheduler import Scheduler

    from bastion.engine.vllm.offline import make_scheduler
    from bastion.engine.vllm.scheduler import TenantScheduler

    hashers = _hashers()
    rng = random.Random(1)
    system = [rng.randrange(49152) for _ in range(512)]  # a shared 512-token system prompt
    bodies = [[rng.randrange(49152) for _ in range(rng.randrange(40, 200))] for _ in range(n)]

    def run(cls: Any, hasher: Any, salts: list[str | None]) -> tuple[int, int]:
        s = make_scheduler(
            2048, cls, block_size=BLOCK, max_num_seqs=16, max_num_batched_tokens=4096, max_model_len=2048
        )
        return _serve_prompts(s, [(system + b, salts[i]) for i, b in enumerate(bodies)], hasher)

    # One tenant: partitioned (bastion) vs vLLM unpartitioned.
    t_v, c_v = run(Scheduler, hashers["vllm"], [None] * n)
    t_b, c_b = run(TenantScheduler, hashers["bastion"], [_tag(0)] * n)
    single = {
        "requests": n,
        "vllm_hit_rate": round(c_v / t_v, 4),
        "bastion_hit_rate": round(c_b / t_b, 4),
        "ratio": round((c_b / t_b) / (c_v / t_v), 4),
        "goal_ratio": 0.98,
        "goal_met": (c_b / t_b) >= 0.98 * (c_v / t_v),
    }
    # N tenants sharing the system prompt: declared public vs per-tenant partitions. Prefill tokens
    # computed (prompt - cached) is what drives time to first token.
    tenants = 16
    t_p, c_p = run(TenantScheduler, hashers["bastion"], [_tag(i % tenants, len(system)) for i in range(n)])
    t_i, c_i = run(TenantScheduler, hashers["bastion"], [_tag(i % tenants) for i in range(n)])
    shared = {
        "tenants": tenants,
        "requests": n,
        "system_prompt_tokens": len(system),
        "prefill_tokens_public_prefix": t_p - c_p,
        "prefill_tokens_per_tenant": t_i - c_i,
        "hit_rate_public_prefix": round(c_p / t_p, 4),
        "hit_rate_per_tenant": round(c_i / t_i, 4),
        "prefill_saved_pct": round(100 * (1 - (t_p - c_p) / (t_i - c_i)), 2),
    }
    return {"single_tenant": single, "public_prefix": shared}
