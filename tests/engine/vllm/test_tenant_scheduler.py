"""TenantScheduler on a real vLLM v1 Scheduler (tiny block pool, no model weights, no forward pass)."""

from __future__ import annotations

import itertools

from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from bastion._native import BlockKeyer
from bastion.engine.vllm import offline
from bastion.engine.vllm.block_hasher import make_request_block_hasher
from bastion.engine.vllm.scheduler import UNTAGGED, TenantScheduler
from bastion.isolation.tag import PartitionTag
from bastion.tenancy.partition import PartitionKeys

BLOCK = 16
KEY_A, KEY_B = "a" * 64, "b" * 64
_ids = itertools.count()
_tokens = itertools.count(1000)


def make_scheduler(num_blocks: int, cls: type[Scheduler] = TenantScheduler) -> Scheduler:
    return offline.make_scheduler(num_blocks, cls, block_size=BLOCK)


def salt(key: str, reserved: int = 0, cap: int = 0) -> str:
    return PartitionTag(key, 0, reserved, cap).encode()


def request(
    cache_salt: str | None, n_tokens: int, tokens: list[int] | None = None, keyer: BlockKeyer | None = None
) -> Request:
    """vLLM's own block hasher, or with ``keyer`` bastion's (the EngineCore's under isolation)."""
    init_none_hash(sha256)
    ids = tokens if tokens is not None else [next(_tokens) for _ in range(n_tokens)]
    hasher = make_request_block_hasher(BLOCK, keyer) if keyer else get_request_block_hasher(BLOCK, sha256)
    return Request(
        f"r{next(_ids)}", ids, SamplingParams(max_tokens=8), None, cache_salt=cache_salt, block_hasher=hasher
    )


def admitted(s: Scheduler) -> list[str]:
    return [r.req_id for r in s.schedule().scheduled_new_reqs]


def finish(s: Scheduler, *reqs: Request) -> None:
    s.finish_requests([r.request_id for r in reqs], RequestStatus.FINISHED_ABORTED)


def test_tenant_over_cap_waits_while_others_are_admitted_fcfs_within_tenant() -> None:
    s = make_scheduler(40)
    a_salt, b_salt = salt(KEY_A, 0, 4), salt(KEY_B, 4, 0)
    a1, a2, b1, a3 = request(a_salt, 48), request(a_salt, 48), request(b_salt, 48), request(a_salt, 16)
    for r in (a1, a2, b1, a3):
        s.add_request(r)
    # a2 would take A to 6 blocks (cap 4): it waits, and so does a3 (which would fit) behind it; b1 goes.
    assert admitted(s) == [a1.request_id, b1.request_id]
    snap = s.kv_budget_snapshot()
    assert snap[KEY_A]["held"] == 3 and snap[KEY_B]["held"] == 3 and snap[KEY_A]["cap"] == 4
    finish(s, a1)
    assert admitted(s) == [a2.request_id, a3.request_id]  # 3 + 1 blocks: at the cap
    assert s.kv_budget_snapshot()[KEY_A]["held"] == 4
    finish(s, a2, a3, b1)
    assert s.kv_ledger.total_held == 0


def test_admission_leaves_other_tenants_unused_reservation() -> None:
    s = make_scheduler(11)  # 10 usable blocks
    b_salt = salt(KEY_B, 6, 0)
    s.add_request(request(b_salt, 16))
    assert len(admitted(s)) == 1  # b holds 1, 5 of its reservation unused
    big = request(salt(KEY_A), 80)  # 5 blocks: 9 free - 5 kept for b < 5
    small = request(salt(KEY_A), 64)  # 4 blocks fit
    s.add_request(big)
    assert admitted(s) == []
    b2 = request(b_salt, 64)  # b may use its reservation although a is waiting
    s.add_request(b2)
    assert admitted(s) == [b2.request_id]
    s.add_request(small)
    assert admitted(s) == []  # FCFS within a: small stays behind big


def _flood_then_repeat(cls: type[Scheduler]) -> tuple[Scheduler, int]:
    s = make_scheduler(12, cls)  # 11 usable blocks
    b_salt = salt(KEY_B, 4, 0)
    prompt = [next(_tokens) for _ in range(64)]
    b1 = request(b_salt, 64, prompt)
    s.add_request(b1)
    assert admitted(s) == [b1.request_id]
    finish(s, b1)  # b's 4 prompt blocks stay cached
    for _ in range(6):  # a floods with unique prompts
        a = request(salt(KEY_A), 64)
        s.add_request(a)
        assert admitted(s) == [a.request_id]
        finish(s, a)
    repeat = request(b_salt, 64, prompt)
    _, hit_tokens, _ = s.kv_cache_manager.get_computed_blocks(repeat)
    return s, hit_tokens


def test_flood_does_not_evict_cached_prefix_within_reservation() -> None:
    s, hit_tokens = _flood_then_repeat(TenantScheduler)
    assert hit_tokens == 48  # 3 full blocks (vLLM recomputes the last token)
    snap = s.kv_budget_snapshot()
    assert snap[KEY_B]["evictions"] == 0 and snap[KEY_B]["cached"] == 4
    assert snap[KEY_A]["evictions"] > 0


def test_vanilla_scheduler_loses_the_prefix_in_the_same_flood() -> None:
    _, hit_tokens = _flood_then_repeat(Scheduler)
    assert hit_tokens == 0


def test_untagged_requests_get_their_own_bucket() -> None:
    s = make_scheduler(20)
    assert isinstance(s, TenantScheduler)
    for bad in (None, "", "bst1.zz.0.0.0", salt(KEY_A).upper()):
        s.add_request(request(bad, 16))
    s.add_request(request(salt(KEY_A, 2, 3), 16))
    assert len(admitted(s)) == 5
    snap = s.kv_budget_snapshot()
    assert snap[UNTAGGED] == {"reserved": 0, "cap": 0, "held": 4, "cached": 0, "preemptions": 0, "evictions": 0}
    assert snap[KEY_A]["held"] == 1 and snap[KEY_A]["reserved"] == 2


def test_tenant_at_cap_is_preempted_not_the_others() -> None:
    s = make_scheduler(40)
    a1, b1 = request(salt(KEY_A, 0, 4), 64), request(salt(KEY_B), 64)
    s.add_request(a1)
    s.add_request(b1)
    assert admitted(s) == [a1.request_id, b1.request_id]
    for r in (a1, b1):
        r.append_output_token_ids(7)  # a decode step: a1 needs a 5th block, past A's cap
    out = s.schedule()
    assert a1.status == RequestStatus.PREEMPTED and b1.status == RequestStatus.RUNNING  # vLLM would take b1 first
    assert set(out.preempted_req_ids or ()) == {a1.request_id}
    snap = s.kv_budget_snapshot()
    assert snap[KEY_A]["preemptions"] == 1 and snap[KEY_B]["preemptions"] == 0
    assert snap[KEY_A]["held"] == 0 and snap[KEY_B]["held"] == 4
    assert s.running == [b1]


def test_oversubscribed_reservations_serve_the_tenant_without_a_guarantee(caplog) -> None:
    """The tenancy policy reserves more blocks than the pool holds (A 30 + B 30 of 40): B's reservation is
    refused by the ledger, B is still served (no guarantee, its cap kept) and a WARNING says so; the
    scheduler, running inside the EngineCore, does not raise."""
    s = make_scheduler(41)  # 40 usable blocks
    a_salt, b_salt = salt(KEY_A, 30, 0), salt(KEY_B, 30, 36)
    a1, b1 = request(a_salt, 48), request(b_salt, 48)
    s.add_request(a1)
    s.add_request(b1)
    with caplog.at_level("WARNING", logger="bastion.engine.vllm.scheduler"):
        assert admitted(s) == [a1.request_id, b1.request_id]
    assert "KV reservation of 30 blocks refused" in caplog.text
    snap = s.kv_budget_snapshot()
    assert snap[KEY_A]["reserved"] == 30 and snap[KEY_B]["reserved"] == 0 and snap[KEY_B]["cap"] == 36
    finish(s, a1, b1)
    assert s.kv_ledger.total_held == 0


def test_per_principal_cache_keys_share_the_tenants_one_budget() -> None:
    """prefix_cache_scope "principal": two principals of a tenant share no cached block, yet they are charged
    to one budget (the tag's tenant key), so the tenant's cap is not multiplied by its principals."""
    keys, keyer = PartitionKeys(b"\x05" * 32), BlockKeyer(b"k" * 32)
    tenant = keys.salt_for("a")

    def tag(principal: str) -> str:
        return PartitionTag(tenant, 0, 0, 4, cache_key=keys.cache_key("a", principal, "principal")).encode()

    p1, p2 = tag("apikey:p1"), tag("apikey:p2")
    s = make_scheduler(40)
    prompt = [next(_tokens) for _ in range(48)]
    r1 = request(p1, 48, prompt, keyer)  # 3 blocks
    r2 = request(p2, 32, None, keyer)  # 2 blocks: each principal is within the cap of 4, the tenant is not
    s.add_request(r1)
    s.add_request(r2)
    assert admitted(s) == [r1.request_id]
    snap = s.kv_budget_snapshot()
    assert snap[tenant]["held"] == 3 and snap[tenant]["cap"] == 4
    assert set(snap) == {tenant, UNTAGGED}  # no ledger entry per principal
    finish(s, r1)  # its 3 prompt blocks stay cached
    assert admitted(s) == [r2.request_id]
    finish(s, r2)
    # The cached prompt: a hit for the principal that sent it, nothing for the tenant's other principal.
    manager = s.kv_cache_manager
    assert manager.get_computed_blocks(request(p1, 48, prompt, keyer))[1] == 32  # vLLM recomputes the last token
    assert manager.get_computed_blocks(request(p2, 48, prompt, keyer))[1] == 0
    assert s.kv_ledger.total_held == 0


def test_the_salt_memo_is_bounded_and_never_reapplies_older_limits(monkeypatch) -> None:
    from bastion.engine.vllm import scheduler

    monkeypatch.setattr(scheduler, "MAX_SALTS", 4)
    s = make_scheduler(40)
    assert isinstance(s, TenantScheduler)
    old, new = salt(KEY_A, 2, 8), salt(KEY_A, 1, 6)  # a policy reload changed tenant A's limits
    s.slot_of(request(old, 16))
    s.slot_of(request(new, 16))
    assert s.kv_budget_snapshot()[KEY_A]["cap"] == 6
    for i in range(6):  # other principals' salts push the memo past its bound (it starts over)
        s.slot_of(request(PartitionTag(KEY_A, 0, 1, 6, cache_key=f"{i:064x}").encode(), 16))
    assert len(s._salt_slot) <= 4
    s.slot_of(request(old, 16))  # a request still carrying the old tag: same slot, limits not reverted
    snap = s.kv_budget_snapshot()
    assert (snap[KEY_A]["reserved"], snap[KEY_A]["cap"]) == (1, 6)
