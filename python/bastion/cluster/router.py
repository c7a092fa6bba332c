"""The Serve request router of a bastion deployment (issue 16, item 2): tenant-aware and admission-bound.

Serve builds one :class:`TenantRouter` per deployment handle, in the process that holds the handle — the
front door — and runs it in a thread of its own. Ray's router API is alpha (``ray[serve]`` is pinned
exactly), so this class stays thin: the decisions are the pure functions of ``bastion.cluster.routing`` and
``bastion.cluster.admission``.

* **Only admitted replicas.** Candidates are filtered by the application's :class:`Admission` in this
  process (a replica whose join report matched the front door's model record and proved isolation, and
  whose ``replica_joined`` record is durable). No admission registered: no replica at all (fail closed).
* **Keyed affinity.** A ``generate`` call carries ``routing_key`` (32 opaque bytes the front door computed
  under its routing secret; ``ReplicaEngine``): replicas are ranked by rendezvous hashing of that key, the
  first one under the load bound first. Other calls (``tokenize``, ``prompt_logprobs``) go to the least
  loaded admitted replica (ties at random).
* **Load** of a replica: Serve's count of its ongoing requests as this handle last saw it (the queue-length
  cache, refreshed by every call and probe), else the engine's running + waiting figures from the replica's
  routing stats (``record_routing_stats``), else 0.

Serve then sends the call to the first rank that accepts it (a replica at ``max_ongoing_requests`` rejects,
and the next rank is tried); when none does, Serve backs off and asks again, and its queue limit
(``max_queued_requests``) turns the excess into back-pressure.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from bastion.cluster import admission
from bastion.cluster.routing import DEFAULT_EPSILON, KEY_BYTES, choose_replica, rendezvous_order

log = logging.getLogger(__name__)

ROUTING_KEY = "routing_key"  # the keyword argument of EngineReplica.generate that carries the key


def routing_key_of(pending: PendingRequest | None) -> bytes | None:
    """The request's routing key, when it carries a well-formed one."""
    if pending is None:
        return None
    key = pending.kwargs.get(ROUTING_KEY)
    if isinstance(key, bytes) and len(key) == KEY_BYTES:
        return key
    return None


def replica_load(router: RequestRouter, replica: RunningReplica) -> int:
    cached = router.replica_queue_len_cache.get(replica.replica_id)
    if cached is not None:
        return max(0, int(cached))
    stats = replica.routing_stats or {}
    try:
        return max(0, int(stats.get("running", 0)) + int(stats.get("waiting", 0)))
    except (TypeError, ValueError):
        return 0


class TenantRouter(RequestRouter):
    """See the module."""

    def initialize_state(self, epsilon: float = DEFAULT_EPSILON, **kwargs: Any) -> None:
        self._epsilon = float(epsilon)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        adm = admission.lookup(self.app_name)
        if adm is None:
            if replicas:  # (none: the application is being deleted)
                log.error("no admission for %s in this process: no replica gets traffic", self.app_name)
            return
        adm.observe({r.replica_id.unique_id: r.replica_metadata for r in replicas})

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Every rank is returned at once: when none accepts, back off before asking again (Serve would
            # otherwise ask again at once, in a busy loop).
            pending_request.routing_context.should_backoff = True
        adm = admission.lookup(self.app_name)
        allowed = adm.admitted() if adm is not None else frozenset()
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas if r.replica_id.unique_id in allowed}
        if not by_id:
            return []
        loads = {rid: replica_load(self, r) for rid, r in by_id.items()}
        key = routing_key_of(pending_request)
        if key is None:
            order = sorted(by_id, key=lambda rid: (loads[rid], random.random()))  # ties: spread
        else:
            first = choose_replica(key, by_id, loads, epsilon=getattr(self, "_epsilon", DEFAULT_EPSILON))
            order = [first] + [rid for rid in rendezvous_order(key, by_id) if rid != first]
        return [[by_id[rid]] for rid in order]
