"""Tenant-aware routing (issue 16, item 2): keyed routing keys and bounded-load rendezvous hashing.

Pure functions; no Ray. Property-style checks use ``random`` with fixed seeds (hypothesis is not in the lock).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bastion.cluster.routing import (
    DEFAULT_EPSILON,
    RoutingKeyer,
    choose_replica,
    load_bound,
    rendezvous_order,
)
from bastion.errors import InvalidArgument
from bastion.isolation.tag import PartitionTag
from bastion.native import BlockKeyer
from bastion.tenancy.partition import PartitionKeys, block_key

SECRET = b"\x11" * 32
BS = 16
KEYS = PartitionKeys(SECRET)
KEYER = RoutingKeyer(KEYS.routing_secret(), block_size=BS, blocks=4)
PROMPT = list(range(1000, 1100))  # 100 tokens: 6 full blocks and a partial one


def tag(tenant: str, principal: str = "apikey:p", scope: str = "tenant", public: int = 0) -> PartitionTag:
    return PartitionTag(KEYS.salt_for(tenant), public, cache_key=KEYS.cache_key(tenant, principal, scope))


def test_same_prompt_from_two_tenants_gives_unrelated_keys() -> None:
    a, b = KEYER.routing_key(tag("a"), None, PROMPT), KEYER.routing_key(tag("b"), None, PROMPT)
    assert len(a) == len(b) == 32 and a != b
    # Nothing of the prompt or the tenant is in the key (it is a keyed hash, not an encoding).
    assert b"a" * 4 not in a and KEYS.salt_for("a").encode() not in a


def test_same_tenant_and_first_blocks_give_the_same_key_whatever_follows() -> None:
    k = KEYER.routing_key(tag("a"), None, PROMPT)
    assert KEYER.routing_key(tag("a"), None, list(PROMPT)) == k  # deterministic
    assert KEYER.routing_key(tag("a"), None, tuple(PROMPT)) == k
    # Only the first 4 blocks (64 tokens) count: a different tail, or none, is the same key.
    assert KEYER.routing_key(tag("a"), None, PROMPT[:64] + [7] * 500) == k
    assert KEYER.routing_key(tag("a"), None, PROMPT[:64]) == k
    # A change inside the routed blocks is a different key.
    changed = list(PROMPT)
    changed[63] += 1
    assert KEYER.routing_key(tag("a"), None, changed) != k


def test_short_prompts_use_their_full_blocks_then_the_partition_alone() -> None:
    three = KEYER.routing_key(tag("a"), None, PROMPT[:48])
    assert three == KEYER.routing_key(tag("a"), None, PROMPT[:63]) != KEYER.routing_key(tag("a"), None, PROMPT[:64])
    # Under one block: keyed by partition and adapter only; still per tenant, distinct from any block's key.
    tiny = KEYER.routing_key(tag("a"), None, PROMPT[:5])
    assert tiny == KEYER.routing_key(tag("a"), None, []) == KEYER.routing_key(tag("a"), None, [9] * 15)
    assert tiny != KEYER.routing_key(tag("b"), None, PROMPT[:5])
    assert tiny not in {three, KEYER.routing_key(tag("a"), None, PROMPT[:16])}


def test_public_prefix_routes_without_the_tenant() -> None:
    public = 70  # the operator's prefix covers the 4 routed blocks (64 tokens) and then some
    a = KEYER.routing_key(tag("a", public=public), None, PROMPT)
    b = KEYER.routing_key(tag("b", public=public), None, PROMPT[:80] + [5] * 20)
    assert a == b
    assert a != KEYER.routing_key(tag("a"), None, PROMPT)  # not the tenant's private key either
    # A prefix covering only some routed blocks: the later blocks are the tenant's, as in the cache.
    partial = 40  # 2 public blocks
    pa, pb = (KEYER.routing_key(tag(t, public=partial), None, PROMPT) for t in "ab")
    assert pa != pb
    # ...unless the prompt has no full block past the public ones.
    assert KEYER.routing_key(tag("a", public=partial), None, PROMPT[:40]) == KEYER.routing_key(
        tag("b", public=partial), None, PROMPT[:40]
    )


def test_principal_scope_separates_principals() -> None:
    alice = KEYER.routing_key(tag("t", "apikey:alice", "principal"), None, PROMPT)
    carol = KEYER.routing_key(tag("t", "apikey:carol", "principal"), None, PROMPT)
    tenant = KEYER.routing_key(tag("t", "apikey:alice", "tenant"), None, PROMPT)
    assert len({alice, carol, tenant}) == 3
    assert alice == KEYER.routing_key(tag("t", "apikey:alice", "principal"), None, PROMPT[:64])
    # The tag's tenant (budget) key is not what routes: the cache key is.
    assert KEYER.routing_key(PartitionTag(KEYS.salt_for("x"), cache_key=KEYS.salt_for("t")), None, PROMPT) == tenant


def test_adapter_is_a_field_of_the_key() -> None:
    base = KEYER.routing_key(tag("a"), None, PROMPT)
    sql = KEYER.routing_key(tag("a"), "sql", PROMPT)
    assert len({base, sql, KEYER.routing_key(tag("a"), "sql2", PROMPT), KEYER.routing_key(tag("a"), "", PROMPT)}) == 4
    assert sql == KEYER.routing_key(tag("a"), "sql", PROMPT[:64])
    # Public blocks are shared across tenants per adapter, not across adapters.
    shared = KEYER.routing_key(tag("a", public=64), "sql", PROMPT)
    assert shared == KEYER.routing_key(tag("b", public=64), "sql", PROMPT)
    assert shared != KEYER.routing_key(tag("a", public=64), None, PROMPT)


def test_keys_depend_on_the_routing_secret_and_are_unrelated_to_block_keys() -> None:
    other = RoutingKeyer(PartitionKeys(b"\x12" * 32).routing_secret(), block_size=BS, blocks=4)
    assert other.routing_key(tag("a"), None, PROMPT) != KEYER.routing_key(tag("a"), None, PROMPT)
    # Same inputs through the EngineCore's block keyer (block-hashing key): a different value.
    engine = BlockKeyer(block_key(SECRET)).chain(None, PROMPT[:64], BS, 0, bytes.fromhex(KEYS.salt_for("a")))
    assert engine[-1] != KEYER.routing_key(tag("a"), None, PROMPT)
    assert KEYS.routing_secret() not in {block_key(SECRET), bytes.fromhex(KEYS.salt_for("a"))}
    assert "<key>" in repr(KEYER) and KEYS.routing_secret().hex() not in repr(KEYER)
    # Block size and block count are parameters: another layout is another key.
    assert RoutingKeyer(KEYS.routing_secret(), block_size=BS, blocks=2).routing_key(tag("a"), None, PROMPT) != (
        KEYER.routing_key(tag("a"), None, PROMPT)
    )


def test_keyer_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        RoutingKeyer(b"short", block_size=BS, blocks=4)
    with pytest.raises(ValueError, match="at least 1"):
        RoutingKeyer(SECRET, block_size=0, blocks=4)
    with pytest.raises(ValueError, match="at least 1"):
        RoutingKeyer(SECRET, block_size=BS, blocks=0)
    with pytest.raises(InvalidArgument, match="token ids"):
        KEYER.routing_key(tag("a"), None, [-1] * 64)


# --- replica choice ---

REPLICAS = [f"replica-{i}" for i in range(5)]


def random_keys(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def test_rendezvous_is_deterministic_and_spreads_keys() -> None:
    keys = random_keys(2000)
    first = [choose_replica(k, REPLICAS, {}) for k in keys]
    assert first == [choose_replica(k, list(reversed(REPLICAS)), {}) for k in keys]  # order of ids irrelevant
    counts = Counter(first)
    assert set(counts) == set(REPLICAS) and all(300 <= c <= 500 for c in counts.values())  # about 400 each
    assert rendezvous_order(keys[0], REPLICAS)[0] == first[0]


def test_removing_a_replica_moves_only_its_keys() -> None:
    keys = random_keys(2000, seed=2)
    before = {k: choose_replica(k, REPLICAS, {}) for k in keys}
    gone = "replica-3"
    after = {k: choose_replica(k, [r for r in REPLICAS if r != gone], {}) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == gone for k in moved)
    assert len(moved) == sum(1 for k in keys if before[k] == gone)
    # Each orphaned key goes to its second choice, so they spread over the survivors.
    assert all(after[k] == rendezvous_order(k, REPLICAS)[1] for k in moved)
    assert len({after[k] for k in moved}) == 4


def test_adding_a_replica_moves_keys_only_to_it() -> None:
    keys = random_keys(2000, seed=3)
    before = {k: choose_replica(k, REPLICAS, {}) for k in keys}
    after = {k: choose_replica(k, [*REPLICAS, "replica-new"], {}) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "replica-new" for k in moved)
    assert 250 <= len(moved) <= 420  # about 1/6 of 2000


def test_an_overloaded_replica_is_skipped_for_the_next_in_rendezvous_order() -> None:
    key = random_keys(1, seed=4)[0]
    order = rendezvous_order(key, REPLICAS[:4])
    # Total 6 (+1 for this request) over 4 replicas, eps 0.25: bound ceil(1.25 * 7 / 4) = 3, and a replica
    # already at 3 would go to 4: both favourites are skipped.
    assert load_bound(6, 4) == 3
    assert choose_replica(key, REPLICAS[:4], {order[0]: 3, order[1]: 3}) == order[2]
    assert choose_replica(key, REPLICAS[:4], {order[0]: 10}) == order[1]
    assert choose_replica(key, REPLICAS[:4], {order[0]: 10, order[1]: 10}) == order[2]
    # A load equal to the mean plus the slack stays; just past it is skipped.
    assert choose_replica(key, REPLICAS[:4], {order[0]: 4, order[1]: 4, order[2]: 4, order[3]: 3}) == order[0]
    assert choose_replica(key, REPLICAS[:4], {order[0]: 5, order[1]: 3, order[2]: 3, order[3]: 3}) == order[1]
    # Replicas absent from the stats count as idle; ids not in `replicas` are ignored.
    assert choose_replica(key, REPLICAS[:4], {"gone": 100}) == order[0]


def test_load_bound_holds_under_a_hot_key() -> None:
    rng = random.Random(5)
    keys = random_keys(20, seed=6)
    load: Counter[str] = Counter()
    for step in range(2000):
        # 70% of requests carry one hot key (a popular public prefix); some requests finish.
        key = keys[0] if rng.random() < 0.7 else rng.choice(keys)
        if load and rng.random() < 0.3:
            done = rng.choice(sorted(r for r, n in load.items() if n))
            load[done] -= 1
        cap = load_bound(sum(load.values()), len(REPLICAS))
        chosen = choose_replica(key, REPLICAS, load)
        assert load[chosen] < cap, step
        load[chosen] += 1
        assert load[chosen] <= cap
    # Without completions the final spread is within the bound of the final mean.
    load.clear()
    for i in range(1000):
        load[choose_replica(keys[0] if i % 10 else keys[i % 20], REPLICAS, load)] += 1
    assert max(load.values()) <= load_bound(999, len(REPLICAS), DEFAULT_EPSILON) == 250


def test_choice_is_the_first_replica_under_the_bound_for_random_loads() -> None:
    rng = random.Random(7)
    for key in random_keys(500, seed=8):
        load = {r: rng.randrange(0, 12) for r in REPLICAS}
        eps = rng.choice([0.0, 0.1, 0.25, 1.0])
        cap = load_bound(sum(load.values()), len(REPLICAS), eps)
        expected = next(r for r in rendezvous_order(key, REPLICAS) if load[r] < cap)
        assert choose_replica(key, REPLICAS, load, epsilon=eps) == expected
        assert choose_replica(key, REPLICAS, dict(load), epsilon=eps) == expected


def test_load_bound_is_exact() -> None:
    assert load_bound(0, 4) == 1  # idle cluster: everyone eligible
    assert load_bound(9, 10, 0.1) == 2  # 1.1 * 10 / 10 = 1.1 -> 2
    assert load_bound(9, 11, 0.1) == 1  # 1.1 * 10 / 11 = 1.0 exactly
    assert load_bound(49, 1, 0.1) == 55  # 1.1 * 50 = 55 exactly; the float product is 55.00000000000001 (-> 56)
    assert load_bound(99, 4, 0.0) == 25


def test_choice_refuses_bad_input() -> None:
    key = random_keys(1)[0]
    with pytest.raises(ValueError, match="no replicas"):
        choose_replica(key, [], {})
    with pytest.raises(ValueError, match="unique"):
        choose_replica(key, ["r", "r"], {})
    with pytest.raises(ValueError, match="32 bytes"):
        choose_replica(b"short", REPLICAS, {})
    with pytest.raises(ValueError, match="non-negative"):
        choose_replica(key, REPLICAS, {"replica-0": -1})
    with pytest.raises(ValueError, match="epsilon"):
        choose_replica(key, REPLICAS, {}, epsilon=float("nan"))
    with pytest.raises(ValueError, match="epsilon"):
        choose_replica(key, REPLICAS, {}, epsilon=-0.5)
