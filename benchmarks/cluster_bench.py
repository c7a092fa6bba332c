#!/usr/bin/env python3
"""Scale-out on Ray (issue 16): what the Serve path costs a call, and what keyed replica routing keeps of the
prefix cache.

Part A, ``serve_overhead`` (``cluster_serve.py``): one call at a time, the same calls on the in-process fake
engine (the anchor) and through bastion's Serve replica path (a one-node cluster of bastion's own, with token
auth and mutual TLS, one fake-engine replica behind bastion's router and admission). Goal: <= 1 ms p50 added to
a one-token generate stream. Not in ``--smoke`` (it starts a Ray node).

Part B, the within-tenant prefix-cache hit rate. 16 tenants, each with a system prompt of its own, send requests
(system prompt + a user message of their own) interleaved at random to a cluster of 2 replicas. Every replica is
a real vLLM v1 scheduler and KV cache manager without a model (``bastion.engine.vllm.offline``: bastion's
TenantScheduler and keyed block hasher, the partition tag as ``cache_salt``, built as the server's
``_partition_tag`` builds it), all stepped in lockstep, one sampled token per request per step. Closed loop: a
fixed number of clients, each sending its next request as soon as its last one finished. Routing modes, one
request stream for all of them, in the same run:

* ``keyed`` — ``bastion.cluster.routing``: the routing key of the request (the same partition tag, its first
  ``ROUTING_BLOCKS`` full blocks) and ``choose_replica`` with each replica's ongoing requests (running + waiting)
  as its load; a replica already holding ``max_ongoing_requests`` refuses and the next rank is tried, which is
  what ``bastion.cluster.router`` and Serve do (Serve's load figure may lag; here it is exact);
* ``keyed_no_load`` — the rendezvous first choice whatever the load (affinity alone: every tenant on one replica,
  requests past a replica's slots wait in its scheduler);
* ``round_robin`` — the anchor to beat;
* ``single`` — one replica of the same size with the per-replica client count: the reference.

Goal: keyed >= 0.95x the single replica's hit rate, and above round robin. Hit tokens are a request's computed
tokens when the scheduler first admits it (``scheduled_new_reqs``), as in isolation_sched.

    .venv/bin/python benchmarks/cluster_bench.py --smoke   # CI: 2-4 requests per tenant; ~30 s, mostly importing vLLM
    .venv/bin/python benchmarks/cluster_bench.py           # 20-40 requests per tenant + sweep, and part A: ~2 min

Writes benchmarks/results/cluster_bench[-smoke].json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402 - after the sys.path insert above
from isolation_sched import _request  # noqa: E402 - after the sys.path insert above (the vLLM Request helper)

BLOCK = 16  # vLLM's default KV block size on GPUs
ROUTING_BLOCKS = 2  # bastion's default cluster.routing_blocks
VOCAB = 49152
MODES = ("single", "round_robin", "keyed", "keyed_no_load")


@dataclass(frozen=True)
class Workload:
    tenants: int = 16
    requests_per_tenant: tuple[int, int] = (20, 40)  # uniform, per tenant
    system_prompt_blocks: tuple[int, int] = (8, 32)  # per tenant: 128-512 tokens
    user_tokens: tuple[int, int] = (32, 256)  # per request
    output_tokens: tuple[int, int] = (16, 128)  # per request (ignore_eos)
    replicas: int = 2
    max_num_seqs: int = 16  # per replica; also its max_ongoing_requests (bastion: model.max_num_seqs)
    clients_per_replica: int = 12  # closed loop, 75 % of the slots
    max_num_batched_tokens: int = 2048
    seed: int = 0

    def kv_blocks(self, system_blocks: int) -> int:
        """Per replica: every tenant's system prompt (``system_blocks`` in all) plus a full batch of the longest
        possible requests, so one replica can hold the whole system-prompt working set while serving (the single
        replica's reference is meaningful); the 2-replica runs get the same size per replica."""
        longest = self.system_prompt_blocks[1] * BLOCK + self.user_tokens[1] + self.output_tokens[1]
        return system_blocks + self.max_num_seqs * math.ceil(longest / BLOCK)


@dataclass(frozen=True)
class Req:
    tenant: int
    tokens: list[int]
    max_tokens: int


def make_requests(w: Workload) -> tuple[list[Req], list[int]]:
    """The request stream (one arrival order for every mode) and each tenant's system-prompt length."""
    rng = random.Random(w.seed)
    systems = [
        [rng.randrange(VOCAB) for _ in range(BLOCK * rng.randint(*w.system_prompt_blocks))] for _ in range(w.tenants)
    ]
    reqs = [
        Req(t, systems[t] + [rng.randrange(VOCAB) for _ in range(rng.randint(*w.user_tokens))], 0)
        for t in range(w.tenants)
        for _ in range(rng.randint(*w.requests_per_tenant))
    ]
    rng.shuffle(reqs)
    reqs = [dataclasses.replace(r, max_tokens=rng.randint(*w.output_tokens)) for r in reqs]
    return reqs, [len(s) for s in systems]


class Partitions:
    """What the server derives from its partition secret: each tenant's tag (as servicer._partition_tag builds
    it: scope "tenant", no public prefix, no KV budget), the EngineCore's block hasher, the routing keyer."""

    def __init__(self, secret: bytes, tenants: int) -> None:
        from bastion.cluster.routing import RoutingKeyer
        from bastion.engine.vllm.block_hasher import make_request_block_hasher
        from bastion.isolation.tag import PartitionTag
        from bastion.native import BlockKeyer
        from bastion.tenancy.partition import PartitionKeys, block_key

        keys = PartitionKeys(secret)
        self.tags: list[PartitionTag] = []
        for t in range(tenants):
            name = f"tenant-{t:02d}"
            cache_key = keys.cache_key(name, f"apikey:{name}", "tenant")
            self.tags.append(PartitionTag(keys.salt_for(name), 0, 0, 0, cache_key=cache_key))
        self.salts = [tag.encode() for tag in self.tags]
        self.hasher = make_request_block_hasher(BLOCK, BlockKeyer(block_key(secret)))
        self.keyer = RoutingKeyer(keys.routing_secret(), block_size=BLOCK, blocks=ROUTING_BLOCKS)


class Replica:
    def __init__(self, rid: str, w: Workload, kv_blocks: int) -> None:
        from bastion.engine.vllm.offline import make_scheduler
        from bastion.engine.vllm.scheduler import TenantScheduler

        self.id = rid
        self.sched = make_scheduler(
            kv_blocks,
            TenantScheduler,
            block_size=BLOCK,
            max_num_seqs=w.max_num_seqs,
            max_num_batched_tokens=w.max_num_batched_tokens,
            max_model_len=2048,
        )
        self.held: dict[str, tuple[Any, int]] = {}  # request id -> (vLLM request, tenant)
        self.requests = self.prompt_tokens = self.hit_tokens = self.peak = 0
        self.tenants: dict[int, int] = {}


Ranker = Callable[[int, list[int], dict[str, int]], tuple[list[str], bool]]


def _ranker(mode: str, ids: list[str], parts: Partitions) -> Ranker:
    """mode -> f(tenant, tokens, loads) = (replicas in the order to try, whether they refuse when full)."""
    from bastion.cluster.routing import choose_replica, rendezvous_order

    turn = itertools.count()

    def keyed(tenant: int, tokens: list[int], load: dict[str, int]) -> tuple[list[str], bool]:
        key = parts.keyer.routing_key(parts.tags[tenant], None, tokens)
        first = choose_replica(key, ids, load)
        return [first] + [r for r in rendezvous_order(key, ids) if r != first], True

    def keyed_no_load(tenant: int, tokens: list[int], load: dict[str, int]) -> tuple[list[str], bool]:
        key = parts.keyer.routing_key(parts.tags[tenant], None, tokens)
        return rendezvous_order(key, ids)[:1], False

    def round_robin(tenant: int, tokens: list[int], load: dict[str, int]) -> tuple[list[str], bool]:
        k = next(turn) % len(ids)
        return ids[k:] + ids[:k], True

    return {"single": round_robin, "round_robin": round_robin, "keyed": keyed, "keyed_no_load": keyed_no_load}[mode]


def run_mode(mode: str, w: Workload, reqs: list[Req], parts: Partitions, kv_blocks: int) -> dict[str, Any]:
    from bastion.cluster.routing import rendezvous_order
    from bastion.engine.vllm.offline import step

    n = 1 if mode == "single" else w.replicas
    reps = {f"replica-{i}": Replica(f"replica-{i}", w, kv_blocks) for i in range(n)}
    ids = list(reps)
    rank = _ranker(mode, ids, parts)
    queue = deque(reqs)  # arrivals to come, in order; the head waits at the front door while no replica accepts
    clients = w.clients_per_replica * n
    hits: dict[str, int] = {}
    held = ticks = off_first = refused_full = front_door_waits = preemptions = 0
    t0 = time.process_time()
    while queue or held:
        while held < clients and queue:  # closed loop: a client sends again as soon as its request ended
            r = queue[0]
            load = {rid: len(rep.held) for rid, rep in reps.items()}
            order, refuses = rank(r.tenant, r.tokens, load)
            fits = [rid for rid in order if not refuses or load[rid] < w.max_num_seqs]
            if not fits:  # every replica at max_ongoing_requests
                front_door_waits += 1
                break
            queue.popleft()
            rep = reps[fits[0]]
            refused_full += fits[0] != order[0]
            if mode.startswith("keyed"):
                key = parts.keyer.routing_key(parts.tags[r.tenant], None, r.tokens)
                off_first += fits[0] != rendezvous_order(key, ids)[0]
            vreq = _request(r.tokens, parts.salts[r.tenant], parts.hasher, r.max_tokens)
            rep.sched.add_request(vreq)
            rep.held[vreq.request_id] = (vreq, r.tenant)
            rep.peak = max(rep.peak, len(rep.held))
            rep.requests += 1
            rep.prompt_tokens += len(r.tokens)
            rep.tenants[r.tenant] = rep.tenants.get(r.tenant, 0) + 1
            held += 1
        ticks += 1
        for rep in reps.values():
            if not rep.held:
                continue
            for new in step(rep.sched).scheduled_new_reqs:  # computed tokens at admission = prefix-cache hit
                hits.setdefault(new.req_id, new.num_computed_tokens)
            for rid, (vreq, _) in list(rep.held.items()):
                if vreq.is_finished():
                    rep.hit_tokens += hits.pop(rid)
                    preemptions += vreq.num_preemptions
                    del rep.held[rid]
                    held -= 1
    cpu_s = time.process_time() - t0
    prompt = sum(rep.prompt_tokens for rep in reps.values())
    hit = sum(rep.hit_tokens for rep in reps.values())
    per_tenant: dict[str, dict[str, int]] = {}
    for rep in reps.values():
        for t, c in sorted(rep.tenants.items()):
            per_tenant.setdefault(f"tenant-{t:02d}", {})[rep.id] = c
    counts = [rep.requests for rep in reps.values()]
    out: dict[str, Any] = {
        "replicas": n,
        "clients": clients,
        "hit_rate": round(hit / prompt, 4),
        "requests": len(reqs),
        "prompt_tokens": prompt,
        "hit_tokens": hit,
        "per_replica": {
            rep.id: {
                "requests": rep.requests,
                "tenants": len(rep.tenants),
                "peak_ongoing": rep.peak,
                "hit_rate": round(rep.hit_tokens / rep.prompt_tokens, 4) if rep.prompt_tokens else None,
            }
            for rep in reps.values()
        },
        "max_over_mean_requests": round(max(counts) * n / sum(counts), 4),
        "per_tenant_replicas": dict(sorted(per_tenant.items())),
        "refused_by_full_replica": refused_full,
        "front_door_waits": front_door_waits,
        "preemptions": preemptions,
        "ticks": ticks,
        "cpu_s": round(cpu_s, 2),
    }
    if mode.startswith("keyed"):
        out["off_first_choice"] = off_first  # requests not on their key's rendezvous-first replica
    return out


def bench_prefix_routing(w: Workload, sweep: bool) -> dict[str, Any]:
    from bastion.cluster.routing import DEFAULT_EPSILON

    reqs, system_lens = make_requests(w)
    secret = random.Random(w.seed).randbytes(32)  # the server's partition secret: fixed, so the split is too
    parts = Partitions(secret, w.tenants)
    kv = w.kv_blocks(sum(system_lens) // BLOCK)
    modes: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        modes[mode] = run_mode(mode, w, reqs, parts, kv)
        print(
            f"{mode:14s} hit rate {modes[mode]['hit_rate']:.4f}  per replica "
            f"{[v['requests'] for v in modes[mode]['per_replica'].values()]}",
            flush=True,
        )
    single, rr, keyed = (modes[m]["hit_rate"] for m in ("single", "round_robin", "keyed"))
    prompt = sum(len(r.tokens) for r in reqs)
    # Every request but each tenant's first hits its whole system prompt (a cache that never evicts).
    bound = sum(system_lens[r.tenant] for r in reqs) - sum(system_lens)
    out: dict[str, Any] = {
        "config": {
            **dataclasses.asdict(w),
            "requests": len(reqs),
            "block_size": BLOCK,
            "routing_blocks": ROUTING_BLOCKS,
            "kv_blocks_per_replica": kv,
            "system_prompt_blocks_total": sum(system_lens) // BLOCK,
            "load": "ongoing requests per replica (running + waiting in its scheduler), exact at each arrival",
            "max_ongoing_requests": w.max_num_seqs,
            "load_bound_epsilon": DEFAULT_EPSILON,
            "scheduler": "bastion TenantScheduler (vLLM v1 Scheduler + KV cache manager), no model",
        },
        "upper_bound_hit_rate": round(bound / prompt, 4),
        "modes": modes,
        "ratios": {
            "keyed_over_single": round(keyed / single, 4),
            "round_robin_over_single": round(rr / single, 4),
            "keyed_no_load_over_single": round(modes["keyed_no_load"]["hit_rate"] / single, 4),
            "keyed_over_round_robin": round(keyed / rr, 4) if rr else None,
        },
        "goal_met": {"keyed_ge_0.95_single": keyed >= 0.95 * single, "keyed_gt_round_robin": keyed > rr},
    }
    if sweep:
        out["sensitivity"] = sensitivity(w, reqs, parts, kv)
    return out


def sensitivity(w: Workload, reqs: list[Req], parts: Partitions, kv: int) -> dict[str, Any]:
    """The same stream with smaller caches per replica (where eviction starts to bite), and keyed routing under
    other partition secrets (the tenant split over the replicas is the routing secret's draw)."""
    rows = []
    for scale in (0.5, 0.75):
        rates = {m: run_mode(m, w, reqs, parts, int(kv * scale))["hit_rate"] for m in MODES}
        ratios = {m: round(rates[m] / rates["single"], 4) for m in MODES if m != "single"}
        rows.append({"kv_blocks_per_replica": int(kv * scale), "hit_rate": rates, "over_single": ratios})
        print(f"kv x{scale}: {rates}", flush=True)
    secrets = []
    for s in range(1, 5):
        other = Partitions(random.Random(w.seed + 1000 + s).randbytes(32), w.tenants)
        r = run_mode("keyed", w, reqs, other, kv)
        secrets.append(
            {
                "secret": s,
                "hit_rate": r["hit_rate"],
                "requests_per_replica": [v["requests"] for v in r["per_replica"].values()],
                "off_first_choice": r["off_first_choice"],
            }
        )
        print(f"keyed, secret {s}: {secrets[-1]}", flush=True)
    return {"kv_scale": rows, "keyed_other_secrets": secrets}


NOTES = (
    "Models a chat/assistant deployment: each tenant's requests open with that tenant's own system prompt "
    "(128-512 tokens, no public prefix shared across tenants, prefix_cache_scope tenant) followed by a user "
    "message of its own (32-256 tokens; no multi-turn reuse), 16-128 tokens out; tenants' traffic mildly uneven "
    "(20-40 requests each), interleaved at random. Closed loop at 75% of the replicas' slots. The only prefix "
    "reuse is within a tenant, so hit rate = how much of each tenant's system prompt the replica it lands on "
    "still holds. Lockstep ticks stand in for time (no model, no forward pass); the per-mode 'ticks' count is "
    "that clock, not a latency. Round robin here is strict alternation; Serve's own default router is "
    "power-of-two-choices."
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run: the program works (CI's smoke test)")
    ap.add_argument("--seed", type=int, default=0, help="workload and partition-secret seed (0)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/cluster_bench[-smoke].json)")
    ap.add_argument(
        "--serve-calls",
        type=int,
        default=None,
        help="calls per kind timed through Serve on a one-node cluster (default 300; 0 in --smoke: no cluster)",
    )
    args = ap.parse_args()
    mode = "smoke" if args.smoke else "full"
    w = Workload(seed=args.seed)
    if args.smoke:
        w = dataclasses.replace(w, requests_per_tenant=(2, 4), output_tokens=(4, 16))
    from serve_bench import versions  # the versions every serving benchmark records

    t0 = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "cluster_bench",
        "mode": mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine_info(),
        "versions": versions(),
        "notes": NOTES,
        "prefix_routing": bench_prefix_routing(w, sweep=not args.smoke),
    }
    calls = args.serve_calls if args.serve_calls is not None else (0 if args.smoke else 300)
    if calls > 0:
        from cluster_serve import GOAL_OVERHEAD_MS, bench_serve_overhead

        overhead = bench_serve_overhead(calls)
        overhead["calls_per_kind"] = calls
        overhead["goal_met"] = {
            f"generate_1_token_overhead_p50_le_{GOAL_OVERHEAD_MS:g}_ms": overhead["generate_1_token"]["overhead_p50_ms"]
            <= GOAL_OVERHEAD_MS
        }
        result["serve_overhead"] = overhead
    result["wall_s"] = round(time.monotonic() - t0, 1)
    out = Path(args.out) if args.out else HERE / "results" / f"cluster_bench{'-smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result["prefix_routing"][k] for k in ("ratios", "goal_met")}))
    if "serve_overhead" in result:
        print(json.dumps({k: v for k, v in result["serve_overhead"].items() if k != "child_wall_s"}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
