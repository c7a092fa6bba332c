"""Which replicas get traffic (bastion.cluster.admission), without a cluster: the join report's check against
the front door's own record, and the order join record -> traffic. Live: pool_cases.py."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from bastion.cluster.admission import (
    ADMITTED,
    JOINED,
    LEFT,
    REFUSED,
    Admission,
    Expected,
    IsolationProof,
    JoinReport,
    lookup,
    refusal,
    register,
    unregister,
)
from bastion.engine.protocol import ModelInfo

DIGEST = "blake3:" + "ab" * 32
INFO = ModelInfo(
    name="m",
    digest=DIGEST,
    max_context=256,
    device="cpu",
    subject_digest="sha256:" + "cd" * 32,
    adapter_digests=(("a1", "blake3:" + "ef" * 32),),
)
EXPECTED = Expected(INFO, "0.1.0", "0.1.0")
PROVEN = IsolationProof(plugin=True, block_hasher=True, tenant_scheduler=True)
CHECKPOINT = "0f" * 16 + ":3:" + "5e" * 32  # the replica's node-local chain: log id, seq, hash


def report(**over: Any) -> JoinReport:
    fields: dict[str, Any] = {
        "replica": "r1",
        "node": "n" * 56,
        "model": "m",
        "digest": DIGEST,
        "subject_digest": INFO.subject_digest,
        "adapter_digests": INFO.adapter_digests,
        "bastion_version": "0.1.0",
        "native_version": "0.1.0",
        "isolation": PROVEN,
        "audit_checkpoint": CHECKPOINT,
    }
    fields.update(over)
    return JoinReport(**fields)


def test_a_report_matching_the_front_doors_record_is_admitted() -> None:
    assert refusal(report(), EXPECTED) is None


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"model": "other"}, "serves model 'other', not 'm'"),
        ({"digest": "blake3:" + "00" * 32}, "model digest differs from this front door's model record"),
        ({"subject_digest": ""}, "signature subject digest differs from this front door's model record"),
        ({"adapter_digests": ()}, "its adapters differ from this front door's model record"),
        ({"bastion_version": "0.0.9"}, "runs bastion 0.0.9, this front door 0.1.0"),
        ({"native_version": "0.2.0"}, "runs native extension 0.2.0, this front door 0.1.0"),
        (
            {"isolation": IsolationProof(plugin=True, tenant_scheduler=True)},
            "no proof of tenant isolation: block_hasher not installed",
        ),
        ({"isolation": IsolationProof()}, "no proof of tenant isolation: plugin, block_hasher, tenant_scheduler"),
        ({"audit_checkpoint": ""}, "no node-local audit chain checkpoint"),
    ],
)
def test_a_report_differing_in_anything_is_refused_with_the_reason(over: dict[str, Any], why: str) -> None:
    got = refusal(report(**over), EXPECTED)
    assert got is not None and got.startswith(why)


def _metadata(**over: Any) -> dict[str, Any]:
    return report(**over).model_dump(mode="json")  # what crosses Ray: JSON types, tuples as lists


def test_an_admitted_replica_gets_traffic_only_once_its_join_record_is_durable() -> None:
    adm = Admission("bastion-m", EXPECTED)
    adm.observe({"r1": _metadata()})
    assert adm.admitted() == frozenset()  # judged, not yet recorded
    (event,) = adm.take_events()
    assert (event.event, event.replica, event.node, event.decision) == (JOINED, "r1", "n" * 56, ADMITTED)
    assert event.checkpoint == CHECKPOINT  # the join record keeps it (bastion audit verify --node)
    adm.recorded(event)
    assert adm.admitted() == {"r1"}
    adm.observe({"r1": _metadata()})  # seen again: judged once only
    assert adm.take_events() == []


def test_a_refused_replica_never_gets_traffic_even_once_recorded() -> None:
    adm = Admission("bastion-m", EXPECTED)
    adm.observe({"r1": _metadata(digest="blake3:" + "00" * 32)})
    (event,) = adm.take_events()
    assert event.decision == REFUSED and "model digest differs" in event.reason
    adm.recorded(event)
    assert adm.admitted() == frozenset()


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        ({}, "malformed join report: bastion_version, digest, isolation, model, native_version, node, replica"),
        ({**_metadata(), "token": "x"}, "malformed join report: token"),  # nothing but the report's fields
        ({**_metadata(), "isolation": {"plugin": "maybe"}}, "malformed join report: isolation.plugin"),
        (_metadata(replica="r2"), "join report names another replica"),
        ({**_metadata(), "audit_checkpoint": "0f" * 16 + ":3:" + "zz"}, "malformed join report: audit_checkpoint"),
    ],
)
def test_a_malformed_or_misdirected_report_is_refused(metadata: dict[str, Any], why: str) -> None:
    adm = Admission("bastion-m", EXPECTED)
    adm.observe({"r1": metadata})
    (event,) = adm.take_events()
    assert event.decision == REFUSED and event.reason == why
    adm.recorded(event)
    assert adm.admitted() == frozenset()


def test_a_replica_that_leaves_stops_getting_traffic_at_once_and_its_departure_is_recorded() -> None:
    adm = Admission("bastion-m", EXPECTED)
    adm.observe({"r1": _metadata(), "r2": _metadata(replica="r2")})
    for e in adm.take_events():
        adm.recorded(e)
    assert adm.admitted() == {"r1", "r2"}
    adm.observe({"r2": _metadata(replica="r2")})
    assert adm.admitted() == {"r2"}  # before any record: a gone replica gets nothing
    (left,) = adm.take_events()
    assert (left.event, left.replica, left.node) == (LEFT, "r1", "n" * 56)


def test_a_replica_gone_before_its_record_is_never_admitted() -> None:
    adm = Admission("bastion-m", EXPECTED)
    adm.observe({"r1": _metadata()})
    (joined,) = adm.take_events()
    adm.observe({})
    adm.recorded(joined)  # the record became durable after the replica left
    assert adm.admitted() == frozenset()


async def test_events_from_the_routers_thread_wake_the_front_doors_loop() -> None:
    adm = Admission("bastion-m", EXPECTED)
    wake = asyncio.Event()
    adm.bind(asyncio.get_running_loop(), wake)
    t = threading.Thread(target=adm.observe, args=({"r1": _metadata()},))
    t.start()
    await asyncio.wait_for(wake.wait(), 5)
    t.join()
    assert [e.replica for e in adm.take_events()] == ["r1"]


def test_the_registry_fails_closed_for_an_unknown_application() -> None:
    assert lookup("bastion-unknown") is None
    adm = Admission("bastion-reg", EXPECTED)
    register(adm)
    try:
        assert lookup("bastion-reg") is adm
    finally:
        unregister("bastion-reg")
    assert lookup("bastion-reg") is None
