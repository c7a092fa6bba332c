"""Standard grpc.health.v1 status for "" (overall) and "bastion.v1.Inference", and the engine watchdog.

NOT_SERVING from start until the engine pool is ready; NOT_SERVING again (for good) once shutdown
begins; and NOT_SERVING while any engine is dead or not ready, which the watchdog checks periodically
(the engine seam exposes no death notification, only ``is_dead()``).
"""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from bastion.engine.protocol import EnginePool

log = logging.getLogger(__name__)

SERVICES = ("", "bastion.v1.Inference")
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
WATCHDOG_INTERVAL_S = 0.5


class Health:
    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()
        self._status: int | None = None

    async def set(self, status: int) -> None:
        if status == self._status:
            return
        self._status = status
        for service in SERVICES:
            await self.servicer.set(service, status)

    @property
    def serving(self) -> bool:
        return self._status == SERVING

    async def shutting_down(self) -> None:
        """NOT_SERVING for good; later set() calls are ignored by the servicer."""
        self._status = NOT_SERVING
        await self.servicer.enter_graceful_shutdown()

    async def follow(self, pool: EnginePool, interval: float = WATCHDOG_INTERVAL_S) -> None:
        """Runs until cancelled: SERVING exactly while the pool is ready and no engine is dead."""
        dead_logged = False
        while True:
            dead = pool.any_dead()
            if dead and not dead_logged:
                log.error("an engine died; health is NOT_SERVING (restart the server)")
            dead_logged = dead
            await self.set(SERVING if pool.is_ready() and not dead else NOT_SERVING)
            await asyncio.sleep(interval)
