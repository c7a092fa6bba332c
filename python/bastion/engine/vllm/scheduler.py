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

import json
import logging
import time
from collections.abc import Callable
from typing import Any, SupportsIndex

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from bastion.engine.process import current
from bastion.engine.vllm.kv_pool import TenantBlockPool
from bastion.errors import InvalidArgument
from bastion.files import atomic_write_text
from bastion.isolation.tag import PartitionTag, TagError
from bastion.native import KvLedger

log = logging.getLogger(__name__)

UNTAGGED = "untagged"
STATS_INTERVAL_S = 1.0
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


class TenantScheduler(Scheduler):
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
        self._allocate, self._free, self._pop_for_free = kvm.allocate_slots, kvm.free, kvm.pop_blocks_for_free
        # The KV cache manager's methods are wrapped in place (vLLM has no hook for them); the allocate_slots
        # wrapper takes what follows num_new_tokens by keyword, as vLLM passes it.
        kvm.allocate_slots = self._fast_allocate_slots()  # type: ignore[method-assign]  # wrapped in place
        kvm.free = self._kv_free  # type: ignore[method-assign]  # wrapped in place
        kvm.pop_blocks_for_free = self._kv_pop_blocks_for_free  # type: ignore[method-assign]  # wrapped in place
        stats_dir = current().kv_stats_dir
        name = getattr(self.vllm_config.model_config, "served_model_name", None) or "model"
        self._stats_file = stats_dir / f"{name}.json" if stats_dir else None
        self._stats_due = 0.0

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

    def _export_stats(self) -> None:
        """At most once a second: the snapshot to the server's stats directory (written, then renamed)."""
        now = time.monotonic()
        if self._stats_file is None or now < self._stats_due:
            return
        self._stats_due = now + STATS_INTERVAL_S
        try:
            atomic_write_text(self._stats_file, json.dumps(self.kv_ledger.snapshot()), mode=0o644)
        except OSError as exc:  # metrics only: never stops scheduling
            log.warning("cannot write per-tenant KV stats (%s)", exc.strerror)

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
        positional call fails). It runs for every running request on every step, so its fast path (most decode
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
        else:
            charge[1], charge[2] = held, capacity
        return blocks

    def _release(self, request_id: str) -> None:
        charge = self._charge.pop(request_id, None)
        if charge and charge[1]:
            self.kv_ledger.on_free(charge[0], charge[1])

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
        self._export_stats()
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self._hint = None

    def _handle_blocked_waiting_request(self, request: Request) -> bool:
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
