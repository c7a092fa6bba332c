"""What the request path needs from the front end a call came through: the one seam between the shared
core (the servicers, ``bastion.server.generate``, the security gate) and a transport.

``grpc.aio.ServicerContext`` satisfies it as it is; the OpenAI-compatible HTTP front end implements it in
``bastion.server.http.call``. The core names statuses with ``grpc.StatusCode`` (the API's canonical codes);
each front end renders them its own way (the HTTP one maps them to HTTP statuses and OpenAI error bodies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, Protocol

import grpc


class CallContext(Protocol):
    """One call as the core sees it, whichever front end carries it."""

    def invocation_metadata(self) -> Any:
        """The call's headers as (lower-case key, value) pairs (gRPC metadata, or HTTP headers)."""
        ...

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        """The transport's authenticated peer properties (gRPC's auth context; mutual TLS)."""
        ...

    def peer(self) -> str:
        """The peer's address in gRPC's form (``ipv4:HOST:PORT``, ``ipv6:[HOST]:PORT``, ``unix:PATH``)."""
        ...

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        """Headers sent before the first message (the request id)."""
        ...

    async def write(self, message: Any) -> None:
        """One streamed response message; waits while the client does not read (flow control)."""
        ...

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        """Ends the call with ``code`` and the client-safe ``details``; raises, never returns."""
        ...

    def time_remaining(self) -> float | None:
        """Seconds left before the client's deadline; None without one."""
        ...
