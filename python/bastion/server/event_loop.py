"""The server's event loop: uvloop (libuv's loop, what vLLM's and uvicorn's own servers run on) or the
standard library's.

Both run the same asyncio code; uvloop spends less CPU per wake-up, callback and timer, and its TLS transport
(the HTTP API's) is compiled where the standard library's is Python. On two cores the front end shares the CPU
with the engine (issue 19), so the default is uvloop; ``server.event_loop = "asyncio"`` selects the standard
loop. Nothing else changes between the two: the same handlers, limits and timeouts (the test suite runs on
uvloop, tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from bastion.errors import ConfigError

T = TypeVar("T")

EventLoopKind = Literal["uvloop", "asyncio"]


def loop_factory(kind: EventLoopKind) -> Callable[[], asyncio.AbstractEventLoop]:
    """What creates a loop of ``kind``; :class:`ConfigError` naming the setting when uvloop is not installed."""
    if kind == "asyncio":
        return asyncio.SelectorEventLoop  # the standard loop itself, whatever loop policy a library installed
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            'server.event_loop = "uvloop" needs the uvloop package (in requirements/*.lock); install it, '
            'or set server.event_loop = "asyncio"'
        ) from None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: EventLoopKind) -> T:
    """``asyncio.run(main)`` on a loop of ``kind``."""
    try:
        factory = loop_factory(kind)
    except ConfigError:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
