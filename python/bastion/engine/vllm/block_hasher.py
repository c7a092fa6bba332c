"""The EngineCore's prefix-cache block hasher under tenant isolation.

vLLM's default hashes ``(parent, tokens, extra_keys)`` with SHA-256 over an untyped tuple in which the
cache salt, LoRA name and multimodal keys share one namespace, and the salt is whatever the caller sent.
Here every block key is keyed BLAKE3 over typed, length-prefixed fields (``bastion.native.BlockKeyer``,
layout in ``rust/bastion-core/src/blockhash``): the key is derived from the server's partition secret, the
partition is the cache key from the server's partition tag (``bastion.isolation.tag``) for every block
after the operator-declared public prefix, and the adapter's name and path are fields of their own. The
cache key is the tenant key, or for a tenant with ``prefix_cache_scope = "principal"`` the principal's own
key. Two tenants (and two principals of such a tenant) therefore never produce the same block key, and
within a partition prefix caching works as before.

``install()`` runs from the bastion vLLM plugin in every vLLM process and replaces the EngineCore's
``get_request_block_hasher`` when the server's engine-process contract names its partition key file
(``bastion.engine.process``).
A request without a valid tag (none is sent by bastion) gets a random partition of its own: never shared.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from array import array
from collections.abc import Callable
from typing import Any

from bastion.engine.process import current
from bastion.isolation.tag import PartitionTag, TagError
from bastion.native import BlockKeyer
from bastion.tenancy.partition import block_key, load_or_create

log = logging.getLogger(__name__)

RequestBlockHasher = Callable[[Any], list[bytes]]


def make_request_block_hasher(block_size: int, keyer: BlockKeyer) -> RequestBlockHasher:
    """A drop-in for vLLM's ``request_block_hasher``: the keys of the request's new full blocks."""
    nonce = os.urandom(32)

    @functools.lru_cache(maxsize=4096)
    def partition(cache_salt: str | None) -> tuple[bytes, int] | None:
        try:
            tag = PartitionTag.decode(cache_salt)
        except TagError:
            return None
        return bytes.fromhex(tag.cache_key), tag.public_tokens // block_size  # not the budget's tenant key

    def request_block_hasher(request: Any) -> list[bytes]:
        start = len(request.block_hashes) * block_size
        n = request.num_tokens
        if start + block_size > n:
            return []
        part = partition(request.cache_salt)
        if part is None:
            tenant, public_blocks = hashlib.sha256(nonce + request.request_id.encode()).digest(), 0
        else:
            tenant, public_blocks = part
        public_left = max(0, public_blocks - start // block_size)
        parent = request.block_hashes[-1] if request.block_hashes else None
        lora = request.lora_request
        adapter = (lora.lora_name, lora.lora_path or "") if lora else None
        end = start + (n - start) // block_size * block_size
        if request.mm_features or request.prompt_embeds is not None:
            return _with_extras(keyer, request, block_size, start, end, parent, tenant, public_left, adapter)
        # array("I") converts the ints at C speed and hands Rust a buffer: about twice as fast as a list.
        tokens = array("I", request.all_token_ids[start:end])
        return keyer.chain(parent, tokens, block_size, public_left, tenant, adapter)

    request_block_hasher.bastion_keyed = True  # type: ignore[attr-defined]  # what the isolation proof checks
    return request_block_hasher


def _with_extras(
    keyer: BlockKeyer,
    request: Any,
    block_size: int,
    start: int,
    end: int,
    parent: bytes | None,
    tenant: bytes,
    public_left: int,
    adapter: tuple[str, str] | None,
) -> list[bytes]:
    """Block by block, with multimodal items and prompt-embedding digests as typed fields."""
    from vllm.v1.core.kv_cache_utils import _gen_mm_extra_hash_keys, _gen_prompt_embeds_extra_hash_keys

    out: list[bytes] = []
    mm_idx = 0
    for i, lo in enumerate(range(start, end, block_size)):
        hi = lo + block_size
        mm_keys, mm_idx = _gen_mm_extra_hash_keys(request, lo, hi, mm_idx)
        mm = [(int(offset), str(ident).encode()) for _, ident, offset in mm_keys]
        embeds = _gen_prompt_embeds_extra_hash_keys(request, lo, hi)
        key = keyer.block_key(
            parent,
            list(request.all_token_ids[lo:hi]),
            None if i < public_left else tenant,
            adapter,
            mm,
            embeds[0][1] if embeds else None,
        )
        out.append(key)
        parent = key
    return out


def install() -> bool:
    """Replace the EngineCore's block hasher when the server enabled isolation; True when installed."""
    path = current().partition_key_file
    if path is None:
        return False
    keyer = BlockKeyer(block_key(load_or_create(path, create=False)))
    import vllm.v1.engine.core as core

    def get_request_block_hasher(hash_block_size: int, caching_hash_fn: Any) -> RequestBlockHasher:
        log.info(
            "prefix-cache block keys: keyed BLAKE3, partitioned by the tag's cache key (block size %d)", hash_block_size
        )
        return make_request_block_hasher(hash_block_size, keyer)

    core.get_request_block_hasher = get_request_block_hasher  # type: ignore[attr-defined,assignment]  # monkeypatches a vLLM internal
    return True
