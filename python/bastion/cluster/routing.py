"""Tenant-aware replica routing (issue 16, item 2): the keyed routing key and the replica choice.

The front door computes one routing key per request and the Serve request router (a later slice) picks a
replica with ``choose_replica``; both are pure and hold no state but the routing secret.

**The routing key** is the prefix-cache identity of the request's first ``blocks`` full prompt blocks, computed
with the same keyed, typed block encoding the EngineCore uses for its cache (``bastion.native.BlockKeyer``:
keyed BLAKE3 over tagged, length-prefixed fields; layout in ``rust/bastion-core/src/blockhash``), but under the
routing secret (``bastion.tenancy.partition.routing_secret``: HKDF of the partition secret with a label of its
own) instead of the block-hashing key. Its inputs are the partition tag the front door already built for the
request (the cache key: the tenant's, or the principal's under ``prefix_cache_scope = "principal"``; and the
public-prefix length), the adapter name, and the token ids of the first ``blocks`` full blocks. So:

* two requests get the same key exactly when their first routed blocks would share prefix-cache blocks:
  the same prompt from two tenants (or two principals of a principal-scoped tenant) gives unrelated keys;
  blocks inside an operator-declared public prefix are keyed in the public partition, without the tenant,
  so when every routed block is public the key is the same for all tenants (they share those blocks);
* tokens after the routed blocks (and a trailing partial block) do not change the key: a tenant's requests
  that open alike go to the same replica; a prompt shorter than one block is keyed by its partition and
  adapter alone (an empty-token field that no real block has);
* nobody without the routing secret can compute a key or tell whether two keys come from one tenant;
  routing keys are unrelated to the engine's block keys, the salts and the principal keys.

**The replica choice** is rendezvous (highest-random-weight) hashing of the key over replica ids, with a load
bound (consistent hashing with bounded loads): a replica whose load would exceed
``ceil((1 + epsilon) * mean load)`` (the mean counting this request) is skipped for the next in rendezvous order.
The bound always leaves a replica (the least loaded is below it), and after every choice no replica's load is
above it. Removing a replica moves only the keys it held; adding one moves only the keys it now wins.

Neither function logs; a key is 32 opaque bytes and a choice is a replica id. Ray is not imported here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction

from bastion.isolation.tag import PartitionTag
from bastion.native import BlockKeyer

KEY_BYTES = 32
# Load bound slack: 0.25 keeps every replica within 125% of the mean (the bounded-load papers' usual choice).
DEFAULT_EPSILON = 0.25
_PERSON = b"bastion.route.v1"  # BLAKE2b personalization (16 bytes): domain of the rendezvous scores


class RoutingKeyer:
    """Routing keys under one routing secret, for one engine block size. The secret cannot be read back."""

    def __init__(self, routing_secret: bytes, *, block_size: int, blocks: int) -> None:
        """``block_size``: the engine's (vLLM's default is 16 on GPU, 128 on CPU). ``blocks``: how many leading
        full blocks the key covers; fewer group more of a tenant's requests on one replica, more spread them."""
        if len(routing_secret) != KEY_BYTES:
            raise ValueError(f"routing secret must be {KEY_BYTES} bytes")
        if block_size < 1 or blocks < 1:
            raise ValueError("block_size and blocks must be at least 1")
        self._keyer = BlockKeyer(routing_secret)
        self.block_size = block_size
        self.blocks = blocks

    def __repr__(self) -> str:
        return f"RoutingKeyer(<key>, block_size={self.block_size}, blocks={self.blocks})"

    def routing_key(self, tag: PartitionTag, adapter: str | None, token_ids: Sequence[int]) -> bytes:
        """The request's 32-byte routing key: partition (``tag``), adapter name and first full blocks."""
        bs = self.block_size
        n = min(len(token_ids) // bs, self.blocks)
        cache_key = bytes.fromhex(tag.cache_key)
        # The adapter's name only: the front door routes by name; the path field stays empty, always.
        lora = None if adapter is None else (adapter, "")
        if n == 0:
            return bytes(self._keyer.block_key(None, [], cache_key, lora))
        keys = self._keyer.chain(None, list(token_ids[: n * bs]), bs, tag.public_tokens // bs, cache_key, lora)
        return bytes(keys[-1])


def _score(key: bytes, replica: str) -> int:
    # Keyed by the routing key: without it nobody can predict which replica a key prefers.
    h = hashlib.blake2b(replica.encode("utf-8"), digest_size=8, key=key, person=_PERSON)
    return int.from_bytes(h.digest(), "big")


def rendezvous_order(key: bytes, replicas: Iterable[str]) -> list[str]:
    """Replica ids by descending rendezvous weight for ``key`` (ties, practically never, by id)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"routing key must be {KEY_BYTES} bytes")
    ids = list(replicas)
    if not ids:
        raise ValueError("no replicas to route to")
    if len(set(ids)) != len(ids):
        raise ValueError("replica ids must be unique")
    return sorted(ids, key=lambda r: (-_score(key, r), r))


def load_bound(total_load: int, replicas: int, epsilon: float = DEFAULT_EPSILON) -> int:
    """The most requests one replica may hold after this one is placed: ``ceil((1 + eps) * (total + 1) / n)``."""
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError("epsilon must be a finite number >= 0")
    if replicas < 1 or total_load < 0:
        raise ValueError("need at least one replica and a non-negative load")
    # Exact arithmetic: the float product 1.1 * 50 is 55.00000000000001, which would round the bound up by one.
    return math.ceil((1 + Fraction(str(epsilon))) * (total_load + 1) / replicas)


def choose_replica(
    key: bytes, replicas: Iterable[str], load: Mapping[str, int], *, epsilon: float = DEFAULT_EPSILON
) -> str:
    """The first replica in rendezvous order whose load (``load[id]``, e.g. ongoing requests; absent = 0) is
    below the load bound, so that taking this request keeps it within the bound."""
    order = rendezvous_order(key, replicas)
    loads = [load.get(r, 0) for r in order]
    if any(n < 0 for n in loads):
        raise ValueError("replica loads must be non-negative")
    cap = load_bound(sum(loads), len(order), epsilon)
    for replica, n in zip(order, loads, strict=True):
        if n < cap:
            return replica
    # Unreachable: the least loaded replica holds at most the mean, which is below the bound.
    return order[loads.index(min(loads))]
