"""Token buckets for per-tenant request and token rate limits (monotonic clock, no background task)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second. Not thread-safe: one event loop uses it."""

    __slots__ = ("rate", "capacity", "_level", "_at", "_clock")

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._level = capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._at:
            self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
        self._at = now

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    def take(self, n: float) -> float:
        """Takes n tokens and returns 0.0, or takes nothing and returns the seconds until n are there.

        A request larger than the capacity can never pass; it returns ``inf``.
        """
        if n > self.capacity:
            return float("inf")
        self._refill()
        if self._level >= n:
            self._level -= n
            return 0.0
        return (n - self._level) / self.rate

    def give_back(self, n: float) -> None:
        """Returns unused tokens (never above capacity)."""
        self._refill()
        self._level = min(self.capacity, self._level + max(0.0, n))
