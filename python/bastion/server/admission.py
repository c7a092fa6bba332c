"""Admission and in-flight tracking: a bounded number of generations, and the drain on shutdown.

Every Inference RPC registers a :class:`Ticket` while it runs so shutdown can wait for them; only
Generate tickets count against ``server.max_inflight_requests``. A full server answers
RESOURCE_EXHAUSTED at once instead of queueing without bound. One tenant holds at most
``max(1, ceil(server.tenant_admission_share * max_inflight_requests))`` of those slots at once; past its
share it is refused (RESOURCE_EXHAUSTED, a rate-limit decision) while other tenants are still admitted.

The server's own assurance probes (the red team's minimum per interval, ``bastion.assurance.redteam``) take
one of ``server.assurance_reserved_slots`` slots of their own, on top of ``max_inflight_requests``
(:meth:`Admission.internal`): tenants never hold those, so a tenant flood that fills admission cannot starve
the red team, and a probe never takes a tenant's slot.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from bastion.errors import Overloaded, RateLimited, Unavailable

# Retry hint when a tenant holds its whole share of admission (generations end at unknown times).
SHARE_RETRY_S = 1.0


class Ticket:
    """One running RPC. Shutdown past the grace period calls :meth:`request_abort`."""

    __slots__ = ("request_id", "counted", "task", "abort_requested", "cancellable")

    def __init__(self, request_id: str, counted: bool) -> None:
        self.request_id = request_id
        self.counted = counted
        self.task = asyncio.current_task()
        self.abort_requested = False
        # True while the handler waits on the engine; False while it writes to the client, so a
        # shutdown abort never interrupts a half-sent message (the handler checks the flag after it).
        self.cancellable = True

    def request_abort(self) -> None:
        self.abort_requested = True
        if self.cancellable and self.task is not None and not self.task.done():
            self.task.cancel("bastion shutdown")


class Admission:
    def __init__(self, max_inflight: int, tenant_share: float = 1.0, reserved: int = 1) -> None:
        if not 0.0 < tenant_share <= 1.0:
            raise ValueError("tenant_share must be in (0, 1]")
        self._max = max_inflight
        # Slots for the server's own assurance probes only (internal()).
        self.reserved = reserved
        self._reserved = asyncio.Semaphore(reserved)
        self._internal = 0
        # Counted slots one tenant may hold at once.
        self.tenant_cap = max(1, math.ceil(tenant_share * max_inflight))
        self._tickets: dict[int, Ticket] = {}
        self._counted = 0
        self._by_tenant: Counter[str] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False

    @property
    def inflight(self) -> int:
        """Admitted generations (the number bounded by max_inflight_requests)."""
        return self._counted

    @property
    def active(self) -> int:
        """Every tracked RPC."""
        return len(self._tickets)

    @property
    def internal_inflight(self) -> int:
        """The server's own probes holding a reserved slot now."""
        return self._internal

    def tenant_inflight(self, tenant: str) -> int:
        """Admitted generations of one tenant (bounded by :attr:`tenant_cap`)."""
        return self._by_tenant[tenant]

    @contextmanager
    def admit(self, request_id: str, *, counted: bool, tenant: str | None = None) -> Iterator[Ticket]:
        """Tracks the current RPC; raises Unavailable when draining, Overloaded when full and RateLimited
        when ``tenant`` holds its share (counted only)."""
        if self.closed:
            raise Unavailable(public="server is shutting down")
        if counted and self._counted >= self._max:
            raise Overloaded()
        holder = tenant if counted else None  # whose share the slot counts against
        if holder is not None and self._by_tenant[holder] >= self.tenant_cap:
            raise RateLimited(SHARE_RETRY_S, detail="tenant admission share")
        ticket = Ticket(request_id, counted)
        key = id(ticket)
        self._tickets[key] = ticket
        self._counted += counted
        if holder is not None:
            self._by_tenant[holder] += 1
        self._idle.clear()
        try:
            yield ticket
        finally:
            del self._tickets[key]
            self._counted -= counted
            if holder is not None:
                self._by_tenant[holder] -= 1
                if not self._by_tenant[holder]:
                    del self._by_tenant[holder]
            if not self._tickets:
                self._idle.set()

    @asynccontextmanager
    async def internal(self, request_id: str) -> AsyncIterator[Ticket]:
        """One of the reserved slots, for one of the server's own assurance probes (never a tenant's); waits
        while every reserved slot is taken (probes are short and bounded), never for a tenant. Tracked like an
        RPC, so the drain waits for it and aborts it. Raises Unavailable when draining."""
        if self.closed:
            raise Unavailable(public="server is shutting down")
        async with self._reserved:
            if self.closed:
                raise Unavailable(public="server is shutting down")
            ticket = Ticket(request_id, False)
            key = id(ticket)
            self._tickets[key] = ticket
            self._internal += 1
            self._idle.clear()
            try:
                yield ticket
            finally:
                del self._tickets[key]
                self._internal -= 1
                if not self._tickets:
                    self._idle.set()

    def close(self) -> None:
        """Refuses new RPCs from now on; running ones continue."""
        self.closed = True

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until no RPC is tracked, at most timeout seconds; True when idle."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def abort_all(self) -> int:
        """Asks every tracked RPC to end now; returns how many were asked."""
        tickets = list(self._tickets.values())
        for t in tickets:
            t.request_abort()
        return len(tickets)
