"""The HTTP API's listener: uvicorn (HTTP/1.1 over h11; TLS 1.2+ from the standard library's ``ssl``) serving
:class:`~bastion.server.http.api.HttpApi`, inside the server's own event loop, with every limit explicit.

uvicorn bounds the request head (``h11_max_incomplete_event_size``: over ``http.max_header_bytes``, 400 and
the connection closed), open connections in total (``limit_concurrency``: 503), idle keep-alive
(``timeout_keep_alive``). What it leaves open is added by :class:`GuardedH11Protocol`: a connection must
send each request's head within ``http.header_timeout_s`` (from connect, or from its previous response) or
is closed — a slow-headers client (slowloris) holds nothing for long; the TLS handshake has the same deadline
(:meth:`_Server.serve_socket`) —, one peer address holds at most
``http.max_connections_per_peer`` connections (more are closed at once), the client certificate of a mutual
TLS connection (``http.tls.client_ca_file``; verified in the handshake) reaches the app for the
authenticator, and each connection's kernel send
buffer is bounded (``SEND_BUFFER_BYTES``), so that a client that stops reading a stream makes its writes wait
(SSE back-pressure) instead of having megabytes queued for it. uvicorn's signal handling is not
used: the server's own SIGTERM handling drains both front ends.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from bastion.config import HttpSettings, parse_listen
from bastion.errors import ConfigError

log = logging.getLogger(__name__)

# Kernel send buffer of each connection (SO_SNDBUF; Linux doubles it). Unset, Linux grows it to megabytes, so a
# client that stops reading a stream would have the whole of it buffered before a write ever waits: bounded,
# the stream's writes wait within about 200 KiB (this, and uvicorn's 64 KiB transport buffer), and the core's
# write timeout ends the call (server.stream_write_timeout_s).
SEND_BUFFER_BYTES = 64 << 10


class PeerCounts:
    """Open connections per peer address (one listener's)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: Counter[str] = Counter()
        self.refused = 0

    def take(self, peer: str) -> bool:
        if self.open[peer] >= self.cap:
            self.refused += 1
            return False
        self.open[peer] += 1
        return True

    def give(self, peer: str) -> None:
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]


def guarded_protocol(settings: HttpSettings, peers: PeerCounts) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the head deadline and the per-peer cap of ``settings``."""
    deadline_s = settings.header_timeout_s

    class GuardedH11Protocol(H11Protocol):
        _peer: str | None = None
        _head_timer: asyncio.TimerHandle | None = None
        _peer_cert: bytes | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = self.client[0] if self.client else "local"
            if not peers.take(peer):
                log.warning("http: connection from %s refused: %d open from it", peer, peers.cap)
                transport.close()
                return
            self._peer = peer
            tls = transport.get_extra_info("ssl_object")  # the handshake is done: a client certificate is verified
            self._peer_cert = tls.getpeercert(binary_form=True) if tls is not None else None
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
                # Each SSE chunk goes out at once. asyncio sets TCP_NODELAY only on sockets whose protocol
                # number says TCP, which socket.create_server's listening socket (and what it accepts) does not
                # carry: without this, a chunk after the response head waits for the client's delayed ACK (40 ms).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            if self._peer is not None:
                peers.give(self._peer)
                self._peer = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(deadline_s, self._head_expired)

        def _head_expired(self) -> None:
            self._head_timer = None
            idle = self.cycle is None or self.cycle.response_complete  # no request head within the deadline
            if idle and not self.transport.is_closing():
                log.info("http: connection closed: no request head within %g s", deadline_s)
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            scope: Any = self.scope
            if scope is not None and "extensions" not in scope:
                # The app may see what this connection still holds unsent and drop it (a reader that stalled),
                # and the client certificate the TLS layer verified (DER; None without mutual TLS).
                scope["extensions"] = {
                    "bastion.close": self._drop,
                    "bastion.buffered": self._buffered,
                    "bastion.peer_cert": self._peer_cert,
                }

        def _drop(self) -> None:
            """Closes at once, discarding what is buffered (close() would wait for a reader that stalled)."""
            self.transport.abort()

        def _buffered(self) -> int:
            return int(self.transport.get_write_buffer_size())

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's head has the same deadline

    return GuardedH11Protocol


def tls_context(settings: HttpSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"http.tls: cannot load the certificate or key ({type(exc).__name__})") from None
    if tls.client_ca_file is not None:  # mutual TLS: a client without a certificate that CA signed is refused
        try:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"http.tls.client_ca_file: cannot load it ({type(exc).__name__})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Server(uvicorn.Server):
    """Started and stopped by the bastion server; never installs signal handlers."""

    async def serve_socket(self, sock: socket.socket, handshake_timeout_s: float) -> None:
        """uvicorn's startup for one listening socket (its lifespan is off), with the TLS handshake bounded by
        ``handshake_timeout_s``: uvicorn's own leaves the TLS layer's 60 s, and the protocol (with its head
        deadline and per-peer cap) sees a connection only once its handshake is done."""
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )
            return protocol

        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if config.ssl is not None:
            tls = {"ssl": config.ssl, "ssl_handshake_timeout": handshake_timeout_s}
        self.servers = [await loop.create_server(create_protocol, sock=sock, backlog=config.backlog, **tls)]
        self.started = True


class HttpListener:
    def __init__(self, server: _Server, sock: socket.socket, peers: PeerCounts) -> None:
        self.server = server
        self.sock = sock
        self.peers = peers

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def stop(self, grace_s: float) -> None:
        """Stops accepting, closes idle connections, gives running responses ``grace_s``, then cancels."""
        self.server.config.timeout_graceful_shutdown = max(1, int(grace_s + 0.999))
        await self.server.shutdown(sockets=[self.sock])


async def start_http_listener(settings: HttpSettings, app: Callable[..., Any]) -> HttpListener:
    """Binds ``http.listen`` and serves ``app``; ConfigError when the address or the TLS files fail."""
    _, host, port = parse_listen(settings.listen)
    context = tls_context(settings)
    try:
        sock = socket.create_server((host, port or 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise ConfigError(
            f"http.listen: cannot bind {settings.listen} ({exc.strerror or type(exc).__name__})"
        ) from None
    peers = PeerCounts(settings.max_connections_per_peer)
    config = uvicorn.Config(
        app,
        http=guarded_protocol(settings, peers),
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.idle_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        ssl_context_factory=(lambda _config, _default: context) if context is not None else None,
    )
    config.load()
    server = _Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        await server.serve_socket(sock, settings.header_timeout_s)
    except BaseException:
        sock.close()
        raise
    return HttpListener(server, sock, peers)
