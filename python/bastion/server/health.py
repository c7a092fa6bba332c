"""Standard grpc.health.v1 status, and the engine watchdog. Four service names, for orchestrators' probes:

* ``readiness`` — and ``""`` (overall) and ``bastion.v1.Inference``, the same status: NOT_SERVING from start
  until the engine pool is ready; NOT_SERVING again (for good) once shutdown begins; NOT_SERVING while any
  engine is dead or not ready, which the watchdog checks periodically (the engine seam exposes no death
  notification, only ``is_dead()``), and while the audit log takes no new calls (its disk is full or below
  its reserve: ``bastion.audit.log``), SERVING again once it does.
* ``liveness`` — the process runs and needs no restart: SERVING from the moment the listener starts,
  through the engine's start (minutes on CPU: a liveness probe must not kill it then) and a full audit disk
  (a restart would not help); NOT_SERVING for good once an engine died or the audit log failed (only a
  restart recovers: bastion.server.app) and once shutdown begins.

One :class:`Health` holds the status; each listener serves it through a :class:`HealthEndpoint` of its
own, which bounds Watch: open streams per peer address and in total (over either cap: RESOURCE_EXHAUSTED at
once) and how long one stream lives (then it ends with status OK and the client opens another). Check is a
dictionary lookup and is not limited here (the listener's concurrent-RPC limit bounds it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from bastion.engine.protocol import EnginePool

log = logging.getLogger(__name__)

READINESS = "readiness"
LIVENESS = "liveness"
SERVICES = ("", "bastion.v1.Inference", READINESS)
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
WATCHDOG_INTERVAL_S = 0.5


@dataclass(frozen=True)
class WatchLimits:
    """Open Health/Watch streams on one listener: in total, from one peer address; and their lifetime."""

    total: int
    per_peer: int
    lifetime_s: float


def peer_key(peer: str) -> str:
    """A peer as gRPC names it (``ipv4:10.0.0.1:5555``, ``ipv6:[::1]:5555``, ``unix:/path``), without the
    port: the address one client may open several connections from. Every unix-socket client is one peer."""
    if peer.startswith(("unix:", "unix-abstract:")):
        return "unix"
    scheme, sep, rest = peer.partition(":")
    if not sep:
        return peer or "?"
    if rest.startswith("["):  # ipv6:[addr]:port
        return f"{scheme}:{rest[: rest.find(']') + 1]}" if "]" in rest else peer
    host, sep, _port = rest.rpartition(":")
    return f"{scheme}:{host}" if sep else peer


class HealthEndpoint:
    """grpc.health.v1 as one listener serves it (``health_pb2_grpc.add_HealthServicer_to_server``): Check and
    Watch answered from the shared :class:`Health`, Watch bounded by ``limits``."""

    def __init__(self, health: Health, limits: WatchLimits, listener: str) -> None:
        self._health = health
        self._limits = limits
        self._listener = listener
        self._per_peer: Counter[str] = Counter()
        self.open_watches = 0
        self._full_logged = False

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        return await self._health.servicer.Check(request, context)

    async def List(self, request: health_pb2.HealthListRequest, context: Any) -> None:
        """Not served (as grpc_health's servicer): Check and Watch cover the two services there are."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        peer = peer_key(context.peer() or "")
        limits = self._limits
        if self.open_watches >= limits.total or self._per_peer[peer] >= limits.per_peer:
            if not self._full_logged:
                log.warning(
                    "%s listener: health Watch refused (open: %d of %d; %s has %d of %d); logged once until "
                    "the count drops",
                    self._listener,
                    self.open_watches,
                    limits.total,
                    peer,
                    self._per_peer[peer],
                    limits.per_peer,
                )
                self._full_logged = True
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many health watches; use Check")
        self.open_watches += 1
        self._per_peer[peer] += 1
        try:
            async with asyncio.timeout(limits.lifetime_s):
                await self._health.servicer.Watch(request, context)
        except TimeoutError:
            pass  # the lifetime is over: the call ends with status OK, and the client opens a new one
        finally:
            self.open_watches -= 1
            self._per_peer[peer] -= 1
            if self._per_peer[peer] <= 0:
                del self._per_peer[peer]
            self._full_logged = False


class Health:
    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()
        self._status: int | None = None
        self._live: int | None = None

    async def set(self, status: int) -> None:
        if status == self._status:
            return
        self._status = status
        for service in SERVICES:
            await self.servicer.set(service, status)

    async def set_live(self, live: bool) -> None:
        """``liveness``: SERVING while the process needs no restart; once NOT_SERVING it stays so."""
        status = SERVING if live and self._live != NOT_SERVING else NOT_SERVING
        if status != self._live:
            self._live = status
            await self.servicer.set(LIVENESS, status)

    def endpoint(self, limits: WatchLimits, listener: str = "main") -> HealthEndpoint:
        """The servicer one listener registers: this status, with Watch bounded by ``limits``."""
        return HealthEndpoint(self, limits, listener)

    @property
    def serving(self) -> bool:
        return self._status == SERVING

    async def shutting_down(self) -> None:
        """NOT_SERVING for good; later set() calls are ignored by the servicer."""
        self._status = NOT_SERVING
        await self.servicer.enter_graceful_shutdown()

    async def follow(
        self,
        pool: EnginePool,
        interval: float = WATCHDOG_INTERVAL_S,
        *,
        audit_accepting: Callable[[], bool] = lambda: True,
    ) -> None:
        """Runs until cancelled: SERVING exactly while the pool is ready, no engine is dead and the audit log
        takes new calls."""
        dead_logged = False
        audit_down = False
        while True:
            dead = pool.any_dead()
            if dead and not dead_logged:
                log.error("an engine died; health is NOT_SERVING (restart the server)")
            dead_logged = dead
            if dead:
                await self.set_live(False)  # only a restart brings a dead engine back
            accepting = audit_accepting()
            if accepting == audit_down:
                if accepting:
                    log.warning("the audit log takes new calls again; health follows the engines")
                else:
                    log.error("the audit log takes no new calls (disk full or below its reserve): NOT_SERVING")
            audit_down = not accepting
            await self.set(SERVING if pool.is_ready() and not dead and accepting else NOT_SERVING)
            await asyncio.sleep(interval)
