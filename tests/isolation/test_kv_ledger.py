"""bastion._native.KvLedger: the per-tenant KV block ledger behind TenantScheduler (SC-4)."""

from __future__ import annotations

import pytest

from bastion._native import KvLedger
from bastion.errors import InvalidArgument


def test_cap_and_other_tenants_reservations_gate_admission() -> None:
    ledger = KvLedger(20)
    a = ledger.register("a" * 64, 0, 5)
    b = ledger.register("b" * 64, 6, 0)
    assert ledger.admit_gate(a, 5) == 6  # must leave b's unused reservation free
    assert ledger.admit_gate(a, 6) is None  # past a's cap
    assert ledger.can_admit(a, 4, 10) and not ledger.can_admit(a, 5, 10)
    assert ledger.can_admit(b, 10, 10)
    ledger.on_allocate(b, 4)
    assert ledger.others_unused(a) == 2 and ledger.total_unused == 2
    ledger.on_allocate(a, 5)
    assert ledger.at_cap(a) and ledger.over_reservation(a) and not ledger.over_reservation(b)
    assert ledger.total_held == 9


def test_errors_change_nothing() -> None:
    ledger = KvLedger(10)
    a = ledger.register("t", 6, 0)
    with pytest.raises(InvalidArgument):
        ledger.register("u", 5, 0)  # reservations over capacity
    with pytest.raises(InvalidArgument):
        ledger.register("u", 3, 2)  # reservation over cap
    assert ledger.slot("u") is None
    ledger.on_allocate(a, 2)
    with pytest.raises(InvalidArgument):
        ledger.on_free(a, 3)
    with pytest.raises(InvalidArgument):
        ledger.held(99)
    assert ledger.held(a) == 2 and ledger.total_held == 2


def test_eviction_protection_and_snapshot() -> None:
    ledger = KvLedger(30)
    b = ledger.register("b", 4, 8)
    ledger.on_cache(b, 4)
    assert not ledger.evictable(b, 0)
    ledger.on_cache(b, 1)
    assert ledger.evictable(b, 0) and not ledger.evictable(b, 1)
    ledger.on_evict(b, 1)
    ledger.on_uncache(b, 2)
    ledger.on_preempt(b)
    assert ledger.snapshot() == {
        "b": {"reserved": 4, "cap": 8, "held": 0, "cached": 2, "preemptions": 1, "evictions": 1}
    }
    assert ledger.register("b", 2, 3) == b
    assert ledger.snapshot()["b"]["cap"] == 3 and ledger.capacity == 30
