from __future__ import annotations

import asyncio

import pytest

from bastion.errors import Overloaded, RateLimited, Unavailable
from bastion.server.admission import Admission


async def test_bounded_and_released() -> None:
    adm = Admission(max_inflight=2)
    with adm.admit("a", counted=True), adm.admit("b", counted=True), adm.admit("t", counted=False):
        assert adm.inflight == 2 and adm.active == 3
        with pytest.raises(Overloaded), adm.admit("c", counted=True):
            pass
    assert adm.inflight == 0 and adm.active == 0
    with adm.admit("d", counted=True):
        assert adm.inflight == 1


async def test_close_refuses_and_wait_idle() -> None:
    adm = Admission(max_inflight=4)
    assert await adm.wait_idle(0)
    release = asyncio.Event()

    async def hold() -> None:
        with adm.admit("x", counted=True):
            await release.wait()

    task = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    adm.close()
    with pytest.raises(Unavailable), adm.admit("y", counted=False):
        pass
    assert not await adm.wait_idle(0.05)
    release.set()
    assert await adm.wait_idle(1)
    await task


async def test_abort_all_cancels_tasks_waiting_on_the_engine() -> None:
    adm = Admission(max_inflight=4)
    seen: list[str] = []

    async def run(cancellable: bool) -> None:
        with adm.admit("r", counted=True) as ticket:
            ticket.cancellable = cancellable
            try:
                await asyncio.sleep(0.2)
                seen.append(f"finished aborted={ticket.abort_requested}")
            except asyncio.CancelledError:
                seen.append("cancelled")

    tasks = [asyncio.ensure_future(run(True)), asyncio.ensure_future(run(False))]
    await asyncio.sleep(0)
    assert adm.abort_all() == 2
    await asyncio.gather(*tasks)
    assert sorted(seen) == ["cancelled", "finished aborted=True"]


async def test_one_tenant_holds_at_most_its_share() -> None:
    adm = Admission(max_inflight=5, tenant_share=0.5)  # ceil(2.5): three per tenant
    assert adm.tenant_cap == 3
    with adm.admit("a1", counted=True, tenant="a"), adm.admit("a2", counted=True, tenant="a"):
        with adm.admit("a3", counted=True, tenant="a"):
            with pytest.raises(RateLimited), adm.admit("a4", counted=True, tenant="a"):
                pass
            with adm.admit("t", counted=False, tenant="a"), adm.admit("b1", counted=True, tenant="b"):
                assert adm.tenant_inflight("a") == 3 and adm.tenant_inflight("b") == 1 and adm.inflight == 4
        with adm.admit("a3'", counted=True, tenant="a"):  # released: the tenant may take it again
            pass
    assert adm.tenant_inflight("a") == 0 and adm.inflight == 0
    assert Admission(max_inflight=1, tenant_share=0.01).tenant_cap == 1  # never below one slot


async def test_reserved_slots_are_the_servers_own_and_never_a_tenants() -> None:
    """Issue 15 (red-team budget): tenants that fill admission leave the reserved slot free for the server's
    own probes; probes never count against tenants; past the reserve a probe waits (never fails, never takes a
    tenant's slot); a closed admission refuses them; the drain waits for them."""
    adm = Admission(max_inflight=2, reserved=1)
    with adm.admit("a", counted=True, tenant="t"), adm.admit("b", counted=True, tenant="u"):
        with pytest.raises(Overloaded), adm.admit("c", counted=True, tenant="v"):
            pass
        async with adm.internal("probe-1"):
            assert adm.internal_inflight == 1 and adm.inflight == 2 and adm.active == 3
            with pytest.raises(Overloaded), adm.admit("d", counted=True, tenant="v"):
                pass  # the reserved slot is not a tenant's
            second = asyncio.ensure_future(_hold_internal(adm, "probe-2"))
            await asyncio.sleep(0.02)
            assert not second.done() and adm.internal_inflight == 1  # waits for the reserved slot
            assert not await adm.wait_idle(0)
        await asyncio.wait_for(second, 1)
    assert adm.internal_inflight == 0 and adm.active == 0 and await adm.wait_idle(0)
    adm.close()
    with pytest.raises(Unavailable):
        async with adm.internal("probe-3"):
            pass


async def _hold_internal(adm: Admission, request_id: str) -> None:
    async with adm.internal(request_id):
        await asyncio.sleep(0)
