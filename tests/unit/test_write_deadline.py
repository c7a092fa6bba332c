"""bastion.server.write_deadline: the stream write timeout with one timer per stream (issue 19). Attacks: a
client that stops reading (the write must end, as Unavailable, after the timeout); a client that reads slowly
but steadily over a stream much longer than the timeout (must not be cut); a client cancel during a write
(must stay a cancel, not become a timeout). And the cost: timers per stream, not per message."""

from __future__ import annotations

import asyncio

import pytest

from bastion.errors import Unavailable
from bastion.server.write_deadline import STALLED, WriteDeadline


async def test_a_write_the_client_never_takes_ends_after_the_timeout() -> None:
    deadline = WriteDeadline(0.2)
    loop = asyncio.get_running_loop()
    await deadline.write(asyncio.sleep(0))  # an earlier write: the timer is armed from the first one
    await asyncio.sleep(0.15)
    t0 = loop.time()
    with pytest.raises(Unavailable) as info:
        await deadline.write(asyncio.Event().wait())  # never completes
    waited = loop.time() - t0
    # Measured from this write's start, not from the first one's (0.05 s); uvloop's clock counts milliseconds.
    assert 0.2 - 1e-3 <= waited < 1.0, waited
    assert info.value.public_message == STALLED
    assert asyncio.current_task().cancelling() == 0  # the timeout's cancel was taken back
    deadline.close()


async def test_steady_writes_over_many_timeouts_are_not_cut_and_arm_few_timers(monkeypatch) -> None:
    loop = asyncio.get_running_loop()
    armed = []
    real_call_at = loop.call_at

    def counting_call_at(when, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
        if getattr(callback, "__self__", None) is deadline:  # the deadline's timers (asyncio.sleep has its own)
            armed.append(when)
        return real_call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    deadline = WriteDeadline(0.1)
    writes = 0
    t_end = loop.time() + 0.6  # six timeouts long
    while loop.time() < t_end:
        await deadline.write(asyncio.sleep(0.01))  # each write takes a tenth of the timeout
        writes += 1
    deadline.close()
    assert writes >= 20
    assert len(armed) <= 0.6 / 0.1 * 2 + 2, (len(armed), writes)  # per timeout window, not per message
    assert not deadline.expired


async def test_a_client_cancel_during_a_write_stays_a_cancel() -> None:
    async def stream() -> None:
        deadline = WriteDeadline(5.0)
        try:
            await deadline.write(asyncio.Event().wait())
        finally:
            deadline.close()

    task = asyncio.ensure_future(stream())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_timeout_on_top_of_a_client_cancel_is_not_swallowed() -> None:
    """The stream's task is already being cancelled (a client cancel) when the timer fires: uncancelling the
    timer's cancel leaves the client's, so the stream ends as cancelled, not as a timeout."""

    async def stream() -> None:
        deadline = WriteDeadline(0.05)
        current = asyncio.current_task()
        assert current is not None

        async def write() -> None:
            current.cancel()  # the client's cancel arrives first, while the write is pending
            try:
                await asyncio.sleep(0.2)  # ... the cancel is delivered here; the timer fires meanwhile
            finally:
                await asyncio.sleep(0.1)

        try:
            await deadline.write(write())
        finally:
            deadline.close()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.ensure_future(stream())
