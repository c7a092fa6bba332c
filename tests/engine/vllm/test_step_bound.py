"""The tenant scheduler's per-step bound (issue 19): the running requests allocate through vLLM's own
``allocate_slots`` when the ledger says no allocation of theirs can pass a cap or reach an unused reservation in
the step, and their charges are settled afterwards. Attacks: a waiting request admitted on a charge that the step
has not yet settled; a tenant near its cap growing unchecked; charges or block owners drifting from the block
tables over a long mixed run; a schedule that differs from the per-allocation check."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.request import Request, RequestStatus

from bastion.engine.vllm import offline
from bastion.engine.vllm.scheduler import AsyncTenantScheduler, TenantScheduler
from bastion.isolation.tag import PartitionTag

BLOCK = 16
BUDGET = 256  # tokens per step: the bound's shared term is 256 / 16 = 16 blocks
KEYS = ["a" * 64, "b" * 64, "c" * 64]


def make(
    num_blocks: int = 400, *, bounded: bool = True, cls: type[TenantScheduler] = TenantScheduler
) -> TenantScheduler:
    s = offline.make_scheduler(num_blocks, cls, block_size=BLOCK, max_num_seqs=32, max_num_batched_tokens=BUDGET)
    assert isinstance(s, TenantScheduler)
    assert s._bounded  # one full-attention group, no connector
    s._bounded = bounded
    return s


def salt(key: str, reserved: int = 0, cap: int = 0) -> str:
    return PartitionTag(key, 0, reserved, cap).encode()


def request(rid: str, cache_salt: str | None, tokens: list[int], max_tokens: int = 1000) -> Request:
    init_none_hash(sha256)
    return Request(
        rid,
        tokens,
        SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        None,
        cache_salt=cache_salt,
        block_hasher=get_request_block_hasher(BLOCK, sha256),
    )


def check_ledger(s: TenantScheduler) -> None:
    """The ledger equals the block tables: per tenant slot, held = the charged requests' table lengths, one open
    request per charge, every charge equal to its table, and every block in a table owned by the request's
    tenant (a prefix hit is a block of the same partition, hence of the same tenant)."""
    tables = s.kv_cache_manager.coordinator.single_type_managers[0].req_to_blocks
    held: Counter[int] = Counter()
    opened: Counter[int] = Counter()
    owner = s._pool._owner
    for rid, (slot, charged, _) in s._charge.items():
        table = tables.get(rid, [])
        assert charged == len(table), rid
        held[slot] += charged
        opened[slot] += 1
        assert all(block.is_null or owner[block.block_id] == slot for block in table), rid
    core = s.kv_ledger.snapshot()
    for key, stats in core.items():
        slot = s.kv_ledger.slot(key)
        assert stats["held"] == held[slot], key
        assert stats["cap"] == 0 or stats["held"] <= stats["cap"], key
    assert s.kv_ledger.total_held == sum(held.values())


def test_admission_sees_the_blocks_running_requests_took_earlier_in_the_step() -> None:
    """A's cap is 20 blocks. a1 (3 blocks) crosses into a 4th block in the running half of the step, which runs
    under the bound (3 held + 1 per request + 16 for the token budget = 20). a2 waits with 17 blocks of prompt:
    3 + 17 = 20 fits only if a1's new block is not counted; with it, 21 > 20, and a2 must wait."""
    s = make()
    a = salt(KEYS[0], 0, 20)
    a1 = request("a1", a, list(range(100, 148)))  # 48 tokens: 3 blocks
    s.add_request(a1)
    offline.step(s)  # prefill; one token sampled: 49 tokens, the next decode needs a 4th block
    assert s.kv_budget_snapshot()[KEYS[0]]["held"] == 3
    s.add_request(request("a2", a, list(range(1000, 1272))))  # 272 tokens: 17 blocks
    before = s.unchecked_steps
    out = offline.step(s)
    assert s.unchecked_steps == before + 1  # the running half ran unwrapped
    assert [r.req_id for r in out.scheduled_new_reqs] == []  # a2 waits: 4 + 17 > 20
    assert s.kv_budget_snapshot()[KEYS[0]]["held"] == 4
    check_ledger(s)


def test_a_tenant_near_its_cap_is_checked_per_allocation_and_preempted_at_it() -> None:
    """With A's running requests able to reach its cap in the step, the step is checked (no unchecked steps),
    and A's request is preempted at the cap while B's runs on: the bound never lets a tenant pass its cap."""
    s = make()
    a1 = request("a1", salt(KEYS[0], 0, 4), list(range(100, 164)))  # 64 tokens: 4 blocks, at A's cap
    b1 = request("b1", salt(KEYS[1]), list(range(200, 264)))
    s.add_request(a1)
    s.add_request(b1)
    offline.step(s)  # admission (checked: waiting requests always are)
    steps = s.unchecked_steps
    offline.step(s)  # decode: a1 needs a 5th block; A could reach 4 + 1 + 16 > 4, so the ledger says no
    assert a1.status == RequestStatus.PREEMPTED and b1.status == RequestStatus.RUNNING
    assert s.unchecked_steps == steps
    assert s.kv_budget_snapshot()[KEYS[0]]["held"] == 0
    check_ledger(s)


def test_the_bound_counts_every_tenants_unused_reservation() -> None:
    """C reserves 385 of 399 blocks and holds none: a step of A's growth (1 + 16 blocks) would reach into it,
    so the step is checked, not unbounded."""
    s = make()
    s.add_request(request("c0", salt(KEYS[2], 385, 0), list(range(10, 26))))  # registers C's reservation
    offline.step(s)
    s.finish_requests(["c0"], RequestStatus.FINISHED_ABORTED)
    s.add_request(request("a1", salt(KEYS[0]), list(range(100, 148))))
    steps = s.unchecked_steps
    for _ in range(3):
        offline.step(s)
    assert s.unchecked_steps == steps  # 399 free - 385 unused < 16 (+ 1 per running request)
    check_ledger(s)


def test_a_step_that_could_uncover_cached_blocks_within_a_reservation_is_checked() -> None:
    """A (reservation 40) holds a running request's blocks and ~30 cached blocks of a finished one: within its
    reservation, so those cached blocks are protected from eviction. The step's growth (1 + 16 blocks) could
    take A past 40, which changes that protection in the middle of the step; settled charges after the step
    would decide evictions on stale counts, so such a step is checked. B, the same without a reservation,
    runs under the bound."""
    for key, reserved, bounded in ((KEYS[0], 40, False), (KEYS[1], 0, True)):
        s = make()
        tag = salt(key, reserved, 0)
        s.add_request(request("old", tag, list(range(5000, 5480)), max_tokens=1))  # 30 blocks, then finished
        for _ in range(3):
            offline.step(s)
        s.add_request(request("new", tag, list(range(100, 148))))
        offline.step(s)
        stats = s.kv_budget_snapshot()[key]
        assert stats["cached"] >= 28 and stats["held"] <= 4 and stats["held"] + stats["cached"] <= 40
        steps = s.unchecked_steps
        for _ in range(5):
            offline.step(s)
            check_ledger(s)
        assert (s.unchecked_steps == steps + 5) is bounded, key


def test_steady_decode_settles_charges_from_the_steps_output() -> None:
    """Nothing waiting: every decode step runs under the bound, and the requests that crossed into a new block
    are charged from the step's output (no waiting request triggers a settlement)."""
    s = make()
    rng = random.Random(3)
    for i in range(8):
        prompt = [rng.randrange(1, 30000) for _ in range(rng.randrange(20, 60))]
        s.add_request(request(f"d{i}", salt(KEYS[i % 2], 8, 200), prompt))
    offline.step(s)
    steps = s.unchecked_steps
    for _ in range(40):
        out = offline.step(s)
        assert not out.scheduled_new_reqs
        check_ledger(s)
    assert s.unchecked_steps == steps + 40
    assert s.kv_ledger.total_held > 8 * 3  # the requests grew


def _workload(seed: int, steps: int, shared_prefixes: bool) -> list[list[tuple[str, str | None, list[int], int]]]:
    """Arrivals per step: (request id, salt, prompt, max tokens) for 3 tenants and untagged requests."""
    rng = random.Random(seed)
    salts = [salt(KEYS[0], 24, 160), salt(KEYS[1], 0, 96), salt(KEYS[2], 48, 0), None]
    prefix = [rng.randrange(1, 30000) for _ in range(64)]
    plan: list[list[tuple[str, str | None, list[int], int]]] = []
    n = 0
    for _ in range(steps):
        arrivals = []
        for _ in range(rng.choice((0, 0, 0, 1, 1, 2, 4))):
            body = [rng.randrange(1, 30000) for _ in range(rng.randrange(8, 240))]
            prompt = (prefix[: rng.choice((16, 32, 64))] + body) if shared_prefixes and rng.random() < 0.5 else body
            arrivals.append((f"q{n}", rng.choice(salts), prompt, rng.randrange(4, 120)))
            n += 1
        plan.append(arrivals)
    return plan


def _run(s: TenantScheduler, plan: list[list[Any]], check: bool, snapshots: bool = False) -> list[tuple[Any, ...]]:
    trace = []
    for arrivals in plan:
        for rid, cache_salt, prompt, max_tokens in arrivals:
            s.add_request(request(rid, cache_salt, prompt, max_tokens))
        out = offline.step(s)
        snap = s.kv_budget_snapshot() if snapshots else None
        trace.append((dict(out.num_scheduled_tokens), sorted(out.preempted_req_ids or ()), snap))
        if check:
            check_ledger(s)
    return trace


SCHEDULERS = pytest.mark.parametrize("cls", [TenantScheduler, AsyncTenantScheduler], ids=["sync", "async"])


@SCHEDULERS
def test_a_long_mixed_run_keeps_the_ledger_equal_to_the_block_tables(cls: type[TenantScheduler]) -> None:
    """Arrivals, shared prefixes (prefix hits, evictions), chunked prefills, finishes and preemptions in a pool
    that fills up: after every step the ledger equals the block tables and no tenant is past its cap, and both
    kinds of step occurred."""
    s = make(240, cls=cls)
    _run(s, _workload(1, 400, shared_prefixes=True), check=True)
    assert 0 < s.unchecked_steps < 400
    assert sum(stats["preemptions"] for stats in s.kv_budget_snapshot().values()) > 0  # the pool did fill


@SCHEDULERS
def test_the_bound_schedules_and_evicts_exactly_what_the_per_allocation_check_does(cls: type[TenantScheduler]) -> None:
    """The same arrivals (shared prefixes: prefix hits and evictions) through the scheduler with the bound and
    with the check on every allocation: on every step the same tokens for the same requests, the same
    preemptions, and the same ledger (held, cached, evictions per tenant) — the bound changes no decision, only
    where it is checked."""
    plan = _workload(2, 300, shared_prefixes=True)
    bounded, checked = make(240, cls=cls), make(240, bounded=False, cls=cls)
    trace_b = _run(bounded, plan, check=False, snapshots=True)
    trace_c = _run(checked, plan, check=False, snapshots=True)
    assert trace_b == trace_c
    assert bounded.unchecked_steps > 0 and checked.unchecked_steps == 0
    assert sum(stats["evictions"] for stats in bounded.kv_budget_snapshot().values()) > 0
