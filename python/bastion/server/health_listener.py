"""The health listener: a second grpc.aio server that serves only ``grpc.health.v1``, for probes.

grpc.aio's ``maximum_concurrent_rpcs`` is one counter per server, taken by every call before any
interceptor runs; on the main listener a crowd of public probes would compete with authenticated calls for
it. Here probes have a server of their own, with its own small limits: at most ``health.max_watch_streams``
Watch streams (capped per peer too, each ending after ``health.watch_lifetime_s``) plus ``CHECK_HEADROOM``
calls, 1 KiB messages, a few streams per connection, and connections closed after a while so that no call
(a Watch, or a call that never sends its request) outlives them.

No interceptor and no credentials: the listener answers health and nothing else (any other method is
UNIMPLEMENTED). Plaintext on loopback or a unix socket; server TLS (``health.tls``, no client certificate)
on any other address, like the main listener's rule. Later front ends (an HTTP API, operations probes)
reuse it through :func:`start_health_listener`.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc

from bastion.config import HealthSettings
from bastion.server.health import Health, WatchLimits
from bastion.server.listener import bind_listen

# Calls beyond the Watch cap, so Check answers while every Watch place is taken.
CHECK_HEADROOM = 16
# A HealthCheckRequest is a service name; a HealthCheckResponse, one enum.
MAX_MESSAGE_BYTES = 1024
# HTTP/2 streams per connection (a probe needs one).
MAX_CONCURRENT_STREAMS = 16
# After a connection's age limit (at least the Watch lifetime), its calls get this long before it closes.
CONNECTION_AGE_GRACE_MS = 10_000
# Connections held at once, handshakes included (probers need a few); beyond it a new one is closed at once.
MAX_CONNECTIONS = 256
# A new connection's TLS handshake and HTTP/2 preface must be done within this (gRPC's default: 120 s).
HANDSHAKE_TIMEOUT_MS = 10_000


def watch_limits(h: HealthSettings) -> WatchLimits:
    return WatchLimits(total=h.max_watch_streams, per_peer=h.max_watch_per_peer, lifetime_s=h.watch_lifetime_s)


def health_server_options(h: HealthSettings) -> list[tuple[str, int]]:
    """Every limit explicit, smaller than the main listener's."""
    age_ms = max(int(h.watch_lifetime_s * 1000), 60_000)
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.so_reuseport", 0),
        ("grpc.max_metadata_size", 8 * 1024),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # A connection lives at most this long (then GOAWAY, and its calls get the grace period): a call
        # that never sends its request, or a client that ignores the Watch lifetime, cannot hold a slot.
        ("grpc.max_connection_age_ms", age_ms),
        ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS),
    ]


def build_health_server(h: HealthSettings, health: Health) -> grpc.aio.Server:
    """grpc.health.v1 only, serving ``health``'s status with ``[health]``'s Watch caps."""
    server = grpc.aio.server(
        options=health_server_options(h),
        maximum_concurrent_rpcs=h.max_watch_streams + CHECK_HEADROOM,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.endpoint(watch_limits(h), "health"), server)
    return server


async def start_health_listener(h: HealthSettings, health: Health) -> tuple[grpc.aio.Server, str, str]:
    """Builds, binds and starts the health listener; returns (server, address, description). Raises
    ConfigError when the address cannot be bound or the TLS files cannot be loaded."""
    server = build_health_server(h, health)
    try:
        address, description = bind_listen(server, h.listen, h.tls, "health")
    except BaseException:
        await server.stop(None)
        raise
    await server.start()
    return server, address, description
