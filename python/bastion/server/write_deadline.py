"""The stream write timeout (``server.stream_write_timeout_s``) with one timer per stream, not one per message.

A client that stops reading keeps HTTP/2 flow control from taking the stream's messages; a write pending for
longer than the timeout ends the stream with :class:`~bastion.errors.Unavailable` (the servicer then aborts the
engine request, frees the slots and records the call). ``asyncio.timeout`` around every write did this at the
cost of a timer, a task lookup and a reschedule per streamed token (issue 19: ~6 % of the front end's CPU
with instant tokens). Here each write only notes when it started; one timer per stream, armed by the first
write, looks at the pending write when it fires: none pending, it is not re-armed until the next write; one
pending past its deadline, the stream's task is cancelled and the write raises ``Unavailable``; one pending
but younger, the timer is moved to that write's deadline. A write is therefore ended no earlier than the
timeout after it started and no later than that plus the scheduling delay, as before. The write stays in the
stream's own task (as under ``asyncio.timeout``; ``wait_for``'s inner task would surface grpc's
ExecuteBatchError instead of a client's cancel).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from bastion.errors import Unavailable

STALLED = "stream aborted: the client did not read the response in time"


class WriteDeadline:
    """Bounds each write of one stream to ``timeout`` seconds; create it in the stream's own task."""

    __slots__ = ("_cancelling", "_handle", "_loop", "_since", "_task", "_timeout", "expired")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("WriteDeadline needs a task")
        self._task = task
        self._since: float | None = None  # when the pending write started; None: no write pending
        self._handle: asyncio.TimerHandle | None = None
        self._cancelling = 0
        self.expired = False

    async def write(self, write: Awaitable[None]) -> None:
        """Awaits ``write`` (the stream's ``context.write(msg)``); :class:`Unavailable` past the timeout."""
        self._since = since = self._loop.time()
        self._cancelling = self._task.cancelling()  # cancels pending before this write are not ours to take back
        if self._handle is None:
            self._handle = self._loop.call_at(since + self._timeout, self._check)
        try:
            await write
        except asyncio.CancelledError:
            # Our cancel (and no other on top of it): the timeout. Anyone else's: propagates as is.
            if self.expired and self._task.uncancel() <= self._cancelling:
                raise Unavailable(f"stream write blocked for {self._timeout:g} s", public=STALLED) from None
            raise
        finally:
            self._since = None

    def _check(self) -> None:
        self._handle = None
        since = self._since
        if since is None or self.expired:
            return  # no write pending: the next write arms the timer again
        due = since + self._timeout
        if self._loop.time() >= due:
            self.expired = True
            self._task.cancel()
        else:
            self._handle = self._loop.call_at(due, self._check)

    def close(self) -> None:
        """Cancels the timer (the stream is over)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
