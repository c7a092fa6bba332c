"""TenantScheduler: vLLM's v1 Scheduler with per-tenant KV block budgets (SC-4).

Use with ``scheduler_cls="bastion.engine.vllm.scheduler.TenantScheduler"`` (``AsyncTenantScheduler`` when
the engine uses async scheduling; ``bastion.engine.vllm.engine`` picks). The tenant of a request is the
tenant key of ``PartitionTag.decode(request.cache_salt)`` — never its cache key, so a tenant whose prefix
cache is partitioned per principal still has one budget; a request whose salt does not decode is charged to
the shared ``untagged`` bucket (no reservation, no cap), never to a tagged tenant.

The accounting is a ``bastion.native.KvLedger`` (O(1) per call). A request is charged the length of
its block tables (blocks it references, prefix hits included), so a tenant's charge never depends on
what other tenants share with it. vLLM's ``schedule()`` is not copied; the hooks are:

- ``allocate_slots`` (every allocation, running or waiting): refused if the tenant would pass its cap;
  otherwise vLLM's own free-block check also keeps back the other tenants' unused reservations
  (``reserved_blocks``). Afterwards the request's charge is set to its block-table length.
- the per-step bound (issue 19): at the start of a step the ledger is asked once whether the running
  requests could pass any cap, reach any unused reservation, or change whether a growing tenant's cached
  blocks are protected from eviction in this step, whatever vLLM schedules (each request holding a charge
  growing by at most ``1 + cdiv(lookahead, block_size)`` blocks, plus the step's token budget in blocks;
  ``KvLedger.step_fits``). When they cannot, the running requests' allocations go to vLLM's
  ``allocate_slots`` unwrapped (no Python per request per step) and their charges and block owners are
  settled from the step's output (the requests given new blocks) — or, before the first waiting request
  is considered, from every charge, so admission always gates on exact charges. Waiting requests are
  always checked per allocation. Only for one full-attention KV group and no KV connector, where a
  block-table length is a function of the tokens.
- ``free`` / ``pop_blocks_for_free``: the request's charge is released.
- waiting admission (``_handle_blocked_waiting_request``): a waiting request whose whole prompt would
  pass its tenant's cap, or not fit in the free blocks beyond other tenants' unused reservations, is
  skipped for the step, as are all later requests of that tenant (FCFS within a tenant; other tenants'
  requests behind it are still admitted). The decision uses only the tenant's own charge and the
  aggregate free/reserved counts, never another tenant's cache contents.
- preemption (FCFS policy): when a running request cannot grow, the victim is the last running request
  (not yet scheduled this step) of the same tenant if it hit its cap, else of a tenant over its
  reservation, else vLLM's choice. Under the PRIORITY policy vLLM picks victims unchanged.
- eviction: ``kv_pool.TenantBlockPool``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from itertools import compress
from typing import Any, SupportsIndex

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.request import Request, RequestStatus

from bastion.engine.vllm.kv_pool import NO_TENANT, TenantBlockPool
from bastion.engine.vllm.stats_scheduler import EngineFigures
from bastion.errors import InvalidArgument
from bastion.isolation.tag import PartitionTag, TagError
from bastion.native import KvLedger

log = logging.getLogger(__name__)

UNTAGGED = "untagged"
# Salts remembered with their slot; past this many the memo starts over (with per-principal cache keys a
# tenant has one salt per principal and public prefix).
MAX_SALTS = 16384


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _Running(list[Request]):
    """The running list; ``pop()`` with no index asks the scheduler which request to preempt."""

    __slots__ = ("pick",)
    pick: Callable[[], int | None]

    def pop(self, index: SupportsIndex = -1) -> Request:
        pick = self.pick() if index == -1 else None
        return super().pop(index if pick is None else pick)


class TenantScheduler(EngineFigures, Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        kvm = self.kv_cache_manager
        pool = kvm.block_pool
        self.kv_ledger = KvLedger(pool.num_gpu_blocks - 1)  # the null block is never usable
        self._pool = TenantBlockPool.adopt(pool, self.kv_ledger)
        self._untagged = self.kv_ledger.register(UNTAGGED, 0, 0)
        self._salt_slot: dict[str | None, int] = {}  # a memo, bounded (MAX_SALTS)
        # (tenant key, reserved, cap) -> slot: each budget is registered once, when first seen, as before the
        # salt memo was bounded: clearing the memo never re-applies an older tag's limits. Grows with
        # tenants and policy versions, not with principals.
        self._budget_slot: dict[tuple[str, int, int], int] = {}
        self._charge: dict[str, list[int]] = {}  # request id -> [slot, blocks charged, their token capacity]
        self._managers = kvm.coordinator.single_type_managers
        self._block_sizes = [m.block_size for m in self._managers]
        self._exact = len(self._managers) == 1  # one group: the block-table length is predictable
        self._step_blocked: set[int] = set()
        self._hint: tuple[Request, int, bool] | None = None  # (request, slot, hit its cap)
        self._running_as_list()
        self._kvm = kvm
        self._allocate, self._free, self._pop_for_free = kvm.allocate_slots, kvm.free, kvm.pop_blocks_for_free
        # The KV cache manager's methods are wrapped in place (vLLM has no hook for them); the allocate_slots
        # wrapper takes what follows num_new_tokens by keyword, as vLLM passes it.
        self._checked_allocate = self._fast_allocate_slots()
        kvm.allocate_slots = self._checked_allocate  # type: ignore[method-assign]  # wrapped in place
        # The per-step bound: one full-attention group (a table's length follows from its tokens, nothing is
        # freed while running requests grow) and no KV connector (no deferred frees or external blocks).
        bs = self._block_sizes[0]
        self._bounded = self._exact and type(self._managers[0]) is FullAttentionManager and self.connector is None
        self._tables = self._managers[0].req_to_blocks
        self._per_request = 1 + _cdiv(self.num_lookahead_tokens, bs)
        self._fixed = _cdiv(self.max_num_scheduled_tokens, bs)
        self._unchecked = False  # this step's running requests allocate without the per-call check
        self.unchecked_steps = 0  # steps that ran under the bound (for tests and benchmarks)
        kvm.free = self._kv_free  # type: ignore[method-assign]  # wrapped in place
        kvm.pop_blocks_for_free = self._kv_pop_blocks_for_free  # type: ignore[method-assign]  # wrapped in place

    def _running_as_list(self) -> _Running:
        """vLLM reassigns ``running`` when requests finish; re-wrap it (once per reassignment)."""
        running = self.running
        if type(running) is not _Running:
            running = _Running(running)
            running.pick = self._pick_victim
            self.running = running
        return running

    def kv_budget_snapshot(self) -> dict[str, dict[str, int]]:
        """Per tenant key: reserved, cap, held, cached, preemptions, evictions (blocks / counts)."""
        return self.kv_ledger.snapshot()

    def _tenants(self) -> dict[str, dict[str, int]]:
        """The per-tenant figures of the engine's stats file (``bastion.engine.vllm.figures``)."""
        return self.kv_ledger.snapshot()

    def slot_of(self, request: Request) -> int:
        salt = request.cache_salt
        slot = self._salt_slot.get(salt)
        if slot is None:
            if len(self._salt_slot) >= MAX_SALTS:
                self._salt_slot.clear()
            slot = self._salt_slot[salt] = self._register(salt)
        return slot

    def _register(self, salt: str | None) -> int:
        try:
            tag = PartitionTag.decode(salt)
        except TagError:
            return self._untagged
        # The budget is the tenant key's; the tag's cache key (tenant or principal) only partitions blocks.
        budget = (tag.tenant_key, tag.kv_reserved_blocks, tag.kv_max_blocks)
        slot = self._budget_slot.get(budget)
        if slot is not None:
            return slot
        try:
            slot = self.kv_ledger.register(tag.tenant_key, tag.kv_reserved_blocks, tag.kv_max_blocks)
        except InvalidArgument:  # the ledger's refusal (bastion.errors, raised by the native binding)
            # reservations exhausted: the tenant keeps its cap but gets no guarantee
            log.warning("KV reservation of %d blocks refused (pool oversubscribed)", tag.kv_reserved_blocks)
            slot = self.kv_ledger.register(tag.tenant_key, 0, tag.kv_max_blocks)
        self._budget_slot[budget] = slot
        return slot

    def _table_len(self, request_id: str) -> int:
        if len(self._managers) == 1:
            return len(self._managers[0].req_to_blocks.get(request_id, ()))
        return sum(len(m.req_to_blocks.get(request_id, ())) for m in self._managers)

    def _want(self, num_tokens: int) -> int:
        """Block-table length (all groups) for `num_tokens` tokens; exact for full attention."""
        num_tokens = min(num_tokens, self.max_model_len)
        if len(self._block_sizes) == 1:
            return -(-num_tokens // self._block_sizes[0])
        return sum(_cdiv(num_tokens, bs) for bs in self._block_sizes)

    # --- hooks on the KV cache manager -------------------------------------------------------

    def _fast_allocate_slots(self) -> Callable[..., Any]:
        """The ``allocate_slots`` wrapper. vLLM 0.32 passes everything after num_new_tokens by keyword (checked: a
        positional call fails). On a step the per-step bound does not cover it runs for every running request, so
        its fast path (most decode
        steps: vLLM passes only num_lookahead_tokens, and the tokens fit in the blocks already charged, so nothing
        is allocated, charged or checked) is a closure over locals — one dict lookup and a comparison, no
        attribute lookups — and everything else goes to ``_kv_allocate_checked`` (issue 19: this hook was most of
        the tenant scheduler's overhead on vLLM's step)."""
        charge_get, allocate, checked = self._charge.get, self._allocate, self._kv_allocate_checked
        scheduler = self

        def allocate_slots(request: Request, num_new_tokens: int, num_lookahead_tokens: int = 0, **kwargs: Any) -> Any:
            if not kwargs:
                charge = charge_get(request.request_id)
                if (
                    charge is not None
                    and request.num_computed_tokens + num_new_tokens + num_lookahead_tokens <= charge[2]
                ):
                    scheduler._hint = None
                    return allocate(request, num_new_tokens, num_lookahead_tokens=num_lookahead_tokens)
            return checked(request, num_new_tokens, num_lookahead_tokens=num_lookahead_tokens, **kwargs)

        return allocate_slots

    def _kv_allocate_checked(
        self,
        request: Request,
        num_new_tokens: int,
        *,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Any = None,
        num_lookahead_tokens: int = 0,
        num_external_computed_tokens: int = 0,
        reserved_blocks: int = 0,
        **kwargs: Any,
    ) -> Any:
        self._hint = None
        rid = request.request_id
        charge = self._charge.get(rid)
        charged = charge[1] if charge else 0
        slot = self.slot_of(request)
        grow = (
            self._want(
                request.num_computed_tokens
                + num_new_computed_tokens
                + num_external_computed_tokens
                + num_new_tokens
                + num_lookahead_tokens
            )
            - charged
        )
        if grow > 0:  # no growth, no gate: a request never fails for blocks it already holds
            keep = self.kv_ledger.admit_gate(slot, grow)
            if keep is None:
                if request.status == RequestStatus.RUNNING:
                    self._hint = (request, slot, True)
                return None
            reserved_blocks += keep
        self._pool.current_slot = slot
        blocks = self._allocate(
            request,
            num_new_tokens,
            num_new_computed_tokens=num_new_computed_tokens,
            new_computed_blocks=new_computed_blocks,
            num_lookahead_tokens=num_lookahead_tokens,
            num_external_computed_tokens=num_external_computed_tokens,
            reserved_blocks=reserved_blocks,
            **kwargs,
        )
        if blocks is None:
            if request.status == RequestStatus.RUNNING:
                self._hint = (request, slot, False)
            return None
        held = self._table_len(rid)
        if held > charged:
            self.kv_ledger.on_allocate(slot, held - charged)
        elif held < charged:
            self.kv_ledger.on_free(slot, charged - held)
        # [slot, blocks charged, tokens those blocks hold (-1: no fast path with several KV groups)]
        capacity = held * self._block_sizes[0] if self._exact else -1
        if charge is None:
            self._charge[rid] = [slot, held, capacity]
            self.kv_ledger.open_request(slot)
        else:
            charge[1], charge[2] = held, capacity
        return blocks

    def _release(self, request_id: str) -> None:
        charge = self._charge.pop(request_id, None)
        if charge:
            if charge[1]:
                self.kv_ledger.on_free(charge[0], charge[1])
            self.kv_ledger.close_request(charge[0])

    # --- the per-step bound -----------------------------------------------------------------------

    def _begin_step(self) -> None:
        """Runs the step's running requests unwrapped when no allocation of theirs can pass a cap, reach an
        unused reservation or change an eviction protection (one ledger call, O(tenants))."""
        if self._bounded and self.kv_ledger.step_fits(self._per_request, self._fixed, self._pool.get_num_free_blocks()):
            self._unchecked = True
            self._pool.current_slot = NO_TENANT  # owners are set when the charges are settled
            self._kvm.allocate_slots = self._allocate  # type: ignore[method-assign]  # vLLM's own, for this step
            self.unchecked_steps += 1

    def _end_unchecked(self, request_ids: Iterable[str] | None) -> None:
        """Back to the checked wrapper; settles the charges of `request_ids` (None: of every request)."""
        self._unchecked = False
        self._kvm.allocate_slots = self._checked_allocate  # type: ignore[method-assign]  # wrapped in place
        if request_ids is None:
            tables = self._tables
            request_ids = [rid for rid, c in self._charge.items() if len(tables.get(rid, ())) != c[1]]
        for rid in request_ids:
            self._settle(rid)

    def _settle(self, request_id: str) -> None:
        """Charges a request its block-table length and records the tenant as owner of its new blocks."""
        table = self._tables.get(request_id, ())
        held = len(table)
        charge = self._charge.get(request_id)
        if charge is None:  # not expected (running requests were charged when admitted): charge it now
            request = self.requests.get(request_id)
            if request is None or not held:
                return
            charge = self._charge[request_id] = [self.slot_of(request), 0, 0]
            self.kv_ledger.open_request(charge[0])
        slot, charged = charge[0], charge[1]
        if held > charged:
            owner = self._pool._owner
            for block in table[charged:held]:
                owner[block.block_id] = slot
            self.kv_ledger.on_allocate(slot, held - charged)
        elif held < charged:
            self.kv_ledger.on_free(slot, charged - held)
        charge[1], charge[2] = held, held * self._block_sizes[0]

    def _kv_free(self, request: Request) -> None:
        self._free(request)
        self._release(request.request_id)

    def _kv_pop_blocks_for_free(self, request: Request) -> Any:
        blocks = self._pop_for_free(request)
        self._release(request.request_id)
        return blocks

    # --- admission and preemption ---------------------------------------------------------------

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        self._step_blocked.clear()
        self._running_as_list()
        self._begin_step()
        output = None
        try:
            output = super().schedule(*args, **kwargs)
            return output
        finally:
            self._hint = None
            if self._unchecked:
                if output is None:
                    self._end_unchecked(None)
                else:  # the requests given new blocks this step (vLLM reports None for the others)
                    cached = output.scheduled_cached_reqs
                    self._end_unchecked(compress(cached.req_ids, cached.new_block_ids))

    def _handle_blocked_waiting_request(self, request: Request) -> bool:
        if self._unchecked:  # the running requests are done: admission gates on exact charges
            self._end_unchecked(None)
        if not super()._handle_blocked_waiting_request(request):
            return False
        slot = self.slot_of(request)
        if slot in self._step_blocked:
            return False
        charge = self._charge.get(request.request_id)
        grow = max(0, self._want(request.num_tokens + self.num_lookahead_tokens) - (charge[1] if charge else 0))
        keep = self.kv_ledger.admit_gate(slot, grow)
        if keep is None or (keep and grow + keep > self._pool.get_num_free_blocks()):
            self._step_blocked.add(slot)
            return False
        return True

    def _pick_victim(self) -> int | None:
        hint, self._hint = self._hint, None
        if hint is None:
            return None
        request, slot, capped = hint
        running, ledger = self.running, self.kv_ledger
        for i in range(len(running) - 1, -1, -1):
            r = running[i]
            s = self.slot_of(r)
            if s == slot if capped else ledger.over_reservation(s):
                return i
            if r is request:
                break
        return None

    def _preempt_request(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.kv_ledger.on_preempt(self.slot_of(request))
        super()._preempt_request(request, *args, **kwargs)


class AsyncTenantScheduler(TenantScheduler, AsyncScheduler):
    """The same budgets over vLLM's AsyncScheduler (engines with async scheduling, e.g. on GPUs)."""
