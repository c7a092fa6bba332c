"""Which Serve replicas may get traffic (issue 16, item 3): join reports, their check, the audit of joins.

Each replica reports at start (Serve's ``record_replica_metadata``, captured once when the replica is
ready and handed to every router through the controller — no secret, no tenant, no prompt in it): its Serve
id and node, the model it loaded (name and digests), bastion's and the native extension's versions, and the
proof from its engine that tenant isolation is installed (:class:`JoinReport`).

The front door admits a replica only when its report matches the front door's **own** model record (the one
the release gate decides on, never the replica's word for it: the same name, directory digest, signature
subject digest and adapters) and its versions, and every isolation element is proven
(:func:`refusal`), and it reports the latest checkpoint of its node-local audit chain (``<log id>:<seq>:<hash>``,
``bastion.cluster.node_audit``), which the ``replica_joined`` record keeps (``replica_checkpoint``). :class:`Admission` holds that decision per Serve application for the request router
(``bastion.cluster.router``), which runs in a thread of its own: a new replica is first *pending*; its
``replica_joined`` audit record (``decision`` = ``admitted`` or ``refused``, with the reason) is written by
the front door's event loop (:meth:`ReplicaPool.attach_audit`), and only once that record is durable does
an admitted replica get traffic. A replica that leaves gets a ``replica_left`` record. A report that cannot
be parsed is refused like one that does not match.

This module imports no Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.audit.replica_set import CHECKPOINT
from bastion.engine.protocol import ModelInfo
from bastion.isolation.proof import IsolationProof

log = logging.getLogger(__name__)

ADMITTED = "admitted"
REFUSED = "refused"
JOINED: Final = "replica_joined"
LEFT: Final = "replica_left"


class JoinReport(BaseModel):
    """One replica's report at join (names, digests and versions only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    replica: str = Field(min_length=1, max_length=128)
    node: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=128)
    digest: str = Field(min_length=1, max_length=256)
    subject_digest: str = Field(default="", max_length=256)
    adapter_digests: tuple[tuple[str, str], ...] = ()
    bastion_version: str = Field(min_length=1, max_length=64)
    native_version: str = Field(min_length=1, max_length=64)
    isolation: IsolationProof
    # The latest checkpoint of the replica's node-local audit chain, ``<log id>:<seq>:<hash>``
    # (bastion.cluster.node_audit), taken once its model's record is durable; "" when it keeps none (refused).
    audit_checkpoint: str = Field(default="", pattern=f"^$|^{CHECKPOINT.pattern}$")


@dataclass(frozen=True)
class Expected:
    """What the front door requires of a replica: its own model record and its own versions."""

    info: ModelInfo
    bastion_version: str
    native_version: str


def refusal(report: JoinReport, expected: Expected) -> str | None:
    """Why ``report`` must not get traffic, or None when it matches ``expected`` in every respect."""
    info = expected.info
    if report.model != info.name:
        return f"serves model {report.model!r}, not {info.name!r}"
    if report.digest != info.digest:
        return "model digest differs from this front door's model record"
    if report.subject_digest != info.subject_digest:
        return "signature subject digest differs from this front door's model record"
    if tuple(sorted(report.adapter_digests)) != tuple(sorted(info.adapter_digests)):
        return "its adapters differ from this front door's model record"
    if report.bastion_version != expected.bastion_version:
        return f"runs bastion {report.bastion_version}, this front door {expected.bastion_version}"
    if report.native_version != expected.native_version:
        return f"runs native extension {report.native_version}, this front door {expected.native_version}"
    missing = report.isolation.missing()
    if missing:
        return "no proof of tenant isolation: " + ", ".join(missing) + " not installed"
    if not report.audit_checkpoint:
        return "no node-local audit chain checkpoint (the replica keeps no chain: its node config names none)"
    return None


@dataclass(frozen=True)
class ReplicaEvent:
    """A join or a departure to write in the audit log (``decision`` only for joins)."""

    event: Literal["replica_joined", "replica_left"]
    replica: str
    node: str = ""
    decision: str = ""
    reason: str = ""
    checkpoint: str = ""  # the join report's node-local chain checkpoint (joins whose report parsed)


class Admission:
    """One Serve application's replicas as this front door sees them (thread-safe; see the module)."""

    def __init__(self, app: str, expected: Expected) -> None:
        self.app = app
        self.expected = expected
        self._lock = threading.Lock()
        self._known: dict[str, str] = {}  # replica id -> "pending" | ADMITTED | REFUSED
        self._nodes: dict[str, str] = {}
        self._admitted: frozenset[str] = frozenset()
        self._events: list[ReplicaEvent] = []
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def observe(self, replicas: Mapping[str, Mapping[str, Any]]) -> None:
        """The router's current replicas (id -> its ``record_replica_metadata``): new ones are judged, gone
        ones leave. Called from the router's thread."""
        events: list[ReplicaEvent] = []
        with self._lock:
            for rid, metadata in replicas.items():
                if rid in self._known:
                    continue
                event = self._judge(rid, metadata)
                self._known[rid] = "pending"
                self._nodes[rid] = event.node
                events.append(event)
            for rid in [r for r in self._known if r not in replicas]:
                del self._known[rid]
                events.append(ReplicaEvent(LEFT, rid, self._nodes.pop(rid, "")))
                self._admitted = self._admitted - {rid}
            self._events.extend(events)
        if events:
            self._notify()

    def _judge(self, rid: str, metadata: Mapping[str, Any]) -> ReplicaEvent:
        try:
            report = JoinReport.model_validate(dict(metadata))
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) or "(report)" for e in exc.errors()})
            return ReplicaEvent(JOINED, rid, "", REFUSED, "malformed join report: " + ", ".join(fields)[:256])
        if report.replica != rid:
            return ReplicaEvent(JOINED, rid, report.node, REFUSED, "join report names another replica")
        why = refusal(report, self.expected)
        decision = ADMITTED if why is None else REFUSED
        return ReplicaEvent(JOINED, rid, report.node, decision, why or "", report.audit_checkpoint)

    def take_events(self) -> list[ReplicaEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def recorded(self, event: ReplicaEvent) -> None:
        """``event``'s audit record is durable: an admitted replica that is still here now gets traffic."""
        if event.event != JOINED:
            return
        with self._lock:
            if event.replica not in self._known:
                return
            self._known[event.replica] = event.decision
            if event.decision == ADMITTED:
                self._admitted = self._admitted | {event.replica}
                log.info("replica %s of %s admitted (node %s)", event.replica, self.app, event.node)
            else:
                log.error("replica %s of %s refused: %s", event.replica, self.app, event.reason)

    def admitted(self) -> frozenset[str]:
        return self._admitted

    def nodes(self) -> dict[str, str]:
        """Each known replica's Ray node, as its join report said."""
        with self._lock:
            return dict(self._nodes)

    def bind(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        """The front door's loop and the event its audit pump waits on."""
        with self._lock:
            self._wake = (loop, wake)
            pending = bool(self._events)
        if pending:
            self._notify()

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None:
            loop, event = wake
            # A closed loop: the server is gone, nothing more is routed.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)


_registry: dict[str, Admission] = {}
_registry_lock = threading.Lock()


def register(admission: Admission) -> None:
    """Makes ``admission`` the one the router of ``admission.app`` consults in this process."""
    with _registry_lock:
        _registry[admission.app] = admission


def unregister(app: str) -> None:
    with _registry_lock:
        _registry.pop(app, None)


def lookup(app: str) -> Admission | None:
    """The application's admission in this process; None: route to no replica at all (fail closed)."""
    with _registry_lock:
        return _registry.get(app)
