"""The HTTP API's listener: uvicorn (HTTP/1.1 over h11; TLS 1.2+ from the standard library's ``ssl``) serving
:class:`~bastion.server.http.api.HttpApi`, inside the server's own event loop, with every limit explicit.

uvicorn bounds the request head (``h11_max_incomplete_event_size``: over ``http.max_header_bytes``, 400 and
the connection closed), open connections in total (``limit_concurrency``: 503), idle keep-alive
(``timeout_keep_alive``). What it leaves open is added by :class:`GuardedH11Protocol`: a connection must
send each request's head within ``http.header_timeout_s`` (from connect, or from its previous response) or
is closed — a slow-headers client (slowloris) holds nothing for long; the TLS handshake has the same deadline
(:meth:`_Server.serve_socket`) —, one peer address holds at most ``http.max_connections_per_peer`` connections
(more are closed at once), counted from accept, so connections still in their TLS handshake count too
(:class:`_Acceptor`), and at most ``http.max_connections`` handshakes run at once, the client certificate of a mutual
TLS connection (``http.tls.client_ca_file``; verified in the handshake) reaches the app for the
authenticator, and each connection's kernel send
buffer is bounded (``SEND_BUFFER_BYTES``), so that a client that stops reading a stream makes its writes wait
(SSE back-pressure) instead of having megabytes queued for it. uvicorn's signal handling is not
used: the server's own SIGTERM handling drains both front ends.
"""

from __future__ import annotations

import asyncio
import errno
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

    def hold(self, peer: str) -> Hold | None:
        """A place for one connection of ``peer`` (None: the peer holds its cap), released exactly once."""
        return Hold(self, peer) if self.take(peer) else None


class Hold:
    """One accepted connection's place in its peer's count: taken at accept, released once (by the acceptor when
    the handshake fails, or by the protocol when the connection ends), whichever comes first and only then."""

    __slots__ = ("peers", "peer", "_held")

    def __init__(self, peers: PeerCounts, peer: str) -> None:
        self.peers = peers
        self.peer = peer
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.peers.give(self.peer)


def guarded_protocol(settings: HttpSettings, peers: PeerCounts) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the head deadline and the per-peer cap of ``settings``."""
    deadline_s = settings.header_timeout_s

    class GuardedH11Protocol(H11Protocol):
        # The connection's place in its peer's count: set by the acceptor, which counted it at accept.
        hold: Hold | None = None
        _head_timer: asyncio.TimerHandle | None = None
        _peer_cert: bytes | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.hold is None:  # not handed over by the acceptor: counted here
                peer = self.client[0] if self.client else "local"
                self.hold = peers.hold(peer)
                if self.hold is None:
                    log.warning("http: connection from %s refused: %d open from it", peer, peers.cap)
                    transport.close()
                    return
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
            if self.hold is not None:
                self.hold.release()
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


# accept() errors that mean "out of a resource for now": wait, as asyncio's own accept loop does, then go on.
_ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_RETRY_S = 1.0


class _Acceptor:
    """Accepts the listener's connections itself and hands each to the loop (``connect_accepted_socket``: TLS with
    the handshake deadline) and then to the protocol. A connection counts against its peer's cap from accept —
    while its TLS handshake runs too, which ``loop.create_server`` would hide until the handshake is done — and at
    most ``max_handshakes`` hand-overs run at once; past either, the new connection is closed at once.
    ``close()`` and ``wait_closed()`` (what uvicorn's shutdown calls on its servers) stop accepting and drop
    handshakes still running."""

    def __init__(
        self,
        sock: socket.socket,
        create_protocol: Callable[[], asyncio.Protocol],
        peers: PeerCounts,
        tls: dict[str, Any],
        max_handshakes: int,
    ) -> None:
        self._sock = sock
        self._create_protocol = create_protocol
        self._peers = peers
        self._tls = tls
        self._max_handshakes = max_handshakes
        self._handshakes: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(self._accept(), name="bastion-http-accept")

    def close(self) -> None:
        self._task.cancel()
        for t in list(self._handshakes):
            t.cancel()

    async def wait_closed(self) -> None:
        """Until the accept loop and every hand-over have ended (after :meth:`close`)."""
        await asyncio.gather(self._task, *self._handshakes, return_exceptions=True)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except ConnectionAbortedError:  # the client gave up before it was accepted
                continue
            except OSError as exc:
                if self._sock.fileno() < 0:  # the listening socket was closed: shutdown
                    return
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                    log.error("http: cannot accept connections (%s); retrying in %g s", exc.strerror, _ACCEPT_RETRY_S)
                    await asyncio.sleep(_ACCEPT_RETRY_S)
                else:  # unexpected: logged, and never a busy loop
                    log.warning("http: accept failed: %s", exc.strerror or type(exc).__name__)
                    await asyncio.sleep(_ACCEPT_RETRY_S / 10)
                continue
            peer = addr[0] if isinstance(addr, tuple) and addr else "local"
            hold = self._peers.hold(peer)
            if hold is None:
                log.warning("http: connection from %s refused: %d open from it", peer, self._peers.cap)
                conn.close()
                continue
            if len(self._handshakes) >= self._max_handshakes:
                log.warning("http: connection from %s refused: %d handshakes in progress", peer, self._max_handshakes)
                hold.release()
                conn.close()
                continue
            task = loop.create_task(self._hand_over(conn, hold))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _hand_over(self, conn: socket.socket, hold: Hold) -> None:
        def create_protocol() -> asyncio.Protocol:
            protocol = self._create_protocol()
            protocol.hold = hold  # type: ignore[attr-defined]  # released by the protocol once connected
            return protocol

        try:
            # From here the loop owns the socket: it closes it on failure (never closed here: its descriptor
            # may already belong to another connection).
            await asyncio.get_running_loop().connect_accepted_socket(create_protocol, conn, **self._tls)
        except Exception as exc:  # noqa: BLE001 - a failed or timed-out handshake ends this connection only
            hold.release()
            log.debug("http: connection from %s ended before it was served: %s", hold.peer, type(exc).__name__)
        except BaseException:  # cancelled (shutdown): the loop closed the connection
            hold.release()
            raise


class _Server(uvicorn.Server):
    """Started and stopped by the bastion server; never installs signal handlers."""

    async def serve_socket(
        self, sock: socket.socket, peers: PeerCounts, handshake_timeout_s: float, max_handshakes: int
    ) -> None:
        """uvicorn's startup for one listening socket (its lifespan is off), accepting through :class:`_Acceptor`:
        the TLS handshake bounded by ``handshake_timeout_s`` (uvicorn's own leaves the TLS layer's 60 s), counted
        per peer from accept, at most ``max_handshakes`` at once."""
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )
            return protocol

        tls: dict[str, Any] = {}
        if config.ssl is not None:
            tls = {"ssl": config.ssl, "ssl_handshake_timeout": handshake_timeout_s}
        sock.setblocking(False)
        sock.listen(config.backlog)
        self.servers = [_Acceptor(sock, create_protocol, peers, tls, max_handshakes)]  # type: ignore[list-item]
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
        await server.serve_socket(sock, peers, settings.header_timeout_s, settings.max_connections)
    except BaseException:
        sock.close()
        raise
    return HttpListener(server, sock, peers)
