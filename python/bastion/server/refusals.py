"""Refusal records, coalesced per key and window, so a flood of refused calls cannot flood the audit log.

A refused call costs its sender almost nothing and the server one fsynced record; unbounded, that turns a
flood into a full disk. So refusals are grouped by key — the peer's address (without its port), the
principal and tenant (when known), the method, the event and the status — and within each window of
``audit.refusal_window_s``:

* the first refusal of a key is recorded in full (``decision`` = ``deny``, its request id and reason), and
  durable before the client hears of it;
* every later one is counted, and when the window closes one record stands for them: the same key fields
  with ``count``, ``first_ms`` and ``last_ms`` (epoch milliseconds) and ``reason`` = ``coalesced``.

At most ``audit.refusal_max_keys`` keys per window are recorded in full; refusals beyond them are counted
under an overflow key (peer, principal and method ``*``). While the log takes no records (its disk is full,
``bastion.audit.log``), refusals are only counted, and the counts are written once it takes records again;
counts not yet written when the process dies are lost (at most one window's), never a record already
acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from bastion.audit.errors import AuditUnavailable
from bastion.server.health import peer_key

log = logging.getLogger(__name__)

#: The fields that make a refusal's key (``peer`` is reduced to its address).
KEY_FIELDS = ("peer", "principal", "tenant", "method", "event", "status")
#: What the overflow key puts in place of the peer, principal and method.
OVERFLOW = "*"
COALESCED = "coalesced"


class AppendsDecisions(Protocol):
    async def append(self, kind: str, fields: dict[str, Any]) -> int: ...


Key = tuple[str, ...]


@dataclass
class _Tally:
    fields: dict[str, Any]
    count: int
    first_ms: int
    last_ms: int

    def record(self) -> dict[str, Any]:
        return {
            **self.fields,
            "decision": "deny",
            "reason": COALESCED,
            "count": self.count,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
        }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RefusalCoalescer:
    """Records refusals through ``log``: the first per key and window in full, the rest as counts.
    :meth:`run` closes a window every ``window_s``; :meth:`flush` closes the current one (at shutdown)."""

    def __init__(self, log: AppendsDecisions, *, window_s: float, max_keys: int) -> None:
        self._log = log
        self._window_s = window_s
        self._max_keys = max_keys
        self._seen: set[Key] = set()
        self._tallies: dict[Key, _Tally] = {}
        self.coalesced_total = 0

    async def refused(self, fields: dict[str, Any]) -> None:
        """Record one refusal (``fields``: its full decision record)."""
        key_fields = {k: str(fields[k]) for k in KEY_FIELDS if fields.get(k)}
        key_fields["peer"] = peer_key(key_fields.get("peer", ""))
        key = tuple(key_fields.get(k, "") for k in KEY_FIELDS)
        if key not in self._seen and len(self._seen) < self._max_keys:
            self._seen.add(key)
            try:
                await self._log.append("decision", fields)
                return
            except AuditUnavailable:
                pass  # the log takes no records now: counted, and written by a later flush
        self._count(key, key_fields, 1, _now_ms(), _now_ms())

    def _count(self, key: Key, key_fields: dict[str, Any], count: int, first_ms: int, last_ms: int) -> None:
        if key not in self._tallies and len(self._tallies) >= self._max_keys:
            key_fields = {**key_fields, "peer": OVERFLOW, "principal": OVERFLOW, "method": OVERFLOW}
            key_fields.pop("tenant", None)
            key = tuple(key_fields.get(k, "") for k in KEY_FIELDS)
        tally = self._tallies.get(key)
        if tally is None:
            self._tallies[key] = _Tally(key_fields, count, first_ms, last_ms)
            return
        tally.count += count
        tally.first_ms = min(tally.first_ms, first_ms)
        tally.last_ms = max(tally.last_ms, last_ms)

    async def flush(self) -> None:
        """Close the window: one record per counted key. A count the log does not take now is kept for the
        next flush."""
        tallies, self._tallies, self._seen = self._tallies, {}, set()
        waiting = 0
        for key, t in tallies.items():
            try:
                await self._log.append("decision", t.record())
                self.coalesced_total += t.count
            except AuditUnavailable:
                self._count(key, t.fields, t.count, t.first_ms, t.last_ms)
                waiting += 1
        if waiting:
            log.warning("%d coalesced refusal records wait for the audit log to take records", waiting)

    async def run(self) -> None:
        """Runs until cancelled: closes a window every ``window_s``."""
        while True:
            await asyncio.sleep(self._window_s)
            await self.flush()
