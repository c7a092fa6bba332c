"""Tenant-aware eviction for vLLM's BlockPool (SC-4).

Every block records the tenant slot that last allocated it (its owner). A free block that still carries
a hash is a cached block of its owner; the ledger counts those per tenant. Eviction (taking a free block
for new use) skips cached blocks whose owner is within its reservation (held + cached <= reserved) and
takes them only when nothing else is free, so one tenant's flood cannot evict another tenant's cached
prefixes inside that tenant's reservation. Skipped blocks move to the tail of the free queue, so each
is passed over at most once per cycle of the queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_utils import KVCacheBlock

from bastion.native import KvLedger

NO_TENANT = -1


class TenantBlockPool(BlockPool):
    """A BlockPool that reports block ownership to a KvLedger; installed on a built pool by `adopt`."""

    ledger: KvLedger
    current_slot: int  # tenant whose allocation is in progress (set by the scheduler)
    _owner: list[int]  # block id -> owner slot
    _cached: list[int]  # block id -> owner slot while counted as cached, else NO_TENANT

    @classmethod
    def adopt(cls, pool: BlockPool, ledger: KvLedger) -> TenantBlockPool:
        if type(pool) is not BlockPool:
            raise TypeError(f"cannot adopt a {type(pool).__name__}")
        pool.__class__ = cls
        assert isinstance(pool, TenantBlockPool)
        pool.ledger = ledger
        pool.current_slot = NO_TENANT
        pool._owner = [NO_TENANT] * pool.num_gpu_blocks
        pool._cached = [NO_TENANT] * pool.num_gpu_blocks
        return pool

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        if self.enable_caching and num_blocks <= self.get_num_free_blocks():
            self._put_evictable_first(num_blocks)
        blocks = super().get_new_blocks(num_blocks)
        owner, slot = self._owner, self.current_slot
        for block in blocks:
            owner[block.block_id] = slot
        return blocks

    def _put_evictable_first(self, n: int) -> None:
        """Make the first `n` free blocks ones that may be taken, protected cached blocks last."""
        queue, cached, ledger = self.free_block_queue, self._cached, self.ledger
        block = queue.fake_free_list_head.next_free_block
        found = scanned = 0
        total = queue.num_free_blocks
        pending: dict[int, int] = {}
        protected: list[KVCacheBlock] = []
        while found < n and scanned < total and block is not None:
            slot = cached[block.block_id]
            if slot != NO_TENANT and not ledger.evictable(slot, pending.get(slot, 0)):
                protected.append(block)
            else:
                found += 1
                if slot != NO_TENANT:
                    pending[slot] = pending.get(slot, 0) + 1
            block = block.next_free_block
            scanned += 1
        for block in protected:
            queue.remove(block)
            queue.append(block)

    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> bool:
        slot = self._cached[block.block_id]
        if slot != NO_TENANT and block.ref_cnt == 0:
            self._cached[block.block_id] = NO_TENANT
            self.ledger.on_evict(slot, 1)
        return super()._maybe_evict_cached_block(block)

    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        cached = self._cached
        for block in blocks:
            slot = cached[block.block_id]
            if slot != NO_TENANT and block.ref_cnt == 0:
                cached[block.block_id] = NO_TENANT
                self.ledger.on_uncache(slot, 1)
        super().touch(blocks)

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        blocks = list(ordered_blocks)
        super().free_blocks(blocks)
        if not self.enable_caching:
            return
        cached, owner = self._cached, self._owner
        for block in blocks:
            if block.ref_cnt or block.block_hash is None or block.pool is not self or block.is_null:
                continue
            i = block.block_id
            slot = owner[i]
            if slot != NO_TENANT and cached[i] == NO_TENANT:
                cached[i] = slot
                self.ledger.on_cache(slot, 1)

    def reset_prefix_cache(self) -> bool:
        if not super().reset_prefix_cache():
            return False
        for i, slot in enumerate(self._cached):
            if slot != NO_TENANT:
                self._cached[i] = NO_TENANT
                self.ledger.on_uncache(slot, 1)
        return True
