"""The grpc.aio server object: explicit limits, TLS/mTLS credentials, and binding the listen address."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import grpc

from bastion.config import ServerSettings, TlsSettings, is_loopback, parse_listen
from bastion.errors import ConfigError

log = logging.getLogger(__name__)

# Non-Inference RPCs (health checks and watches) allowed on top of the admitted generations.
_EXTRA_CONCURRENT_RPCS = 64


def server_options(s: ServerSettings) -> list[tuple[str, int]]:
    """Every limit explicit; nothing left at "unlimited"."""
    return [
        ("grpc.max_send_message_length", s.max_send_message_bytes),
        ("grpc.max_receive_message_length", s.max_receive_message_bytes),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        # SO_REUSEPORT would let a second process bind the same port and silently share traffic.
        ("grpc.so_reuseport", 0),
        # Keepalive pings from clients no more often than every 10 s; idle clients are probed every 2 h.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_time_ms", 2 * 60 * 60 * 1000),
        ("grpc.max_metadata_size", 16 * 1024),
    ]


def build_server(s: ServerSettings) -> grpc.aio.Server:
    return grpc.aio.server(
        options=server_options(s),
        # Bounds everything (Tokenize, ListModels, health) beyond the Generate admission limit.
        maximum_concurrent_rpcs=2 * s.max_inflight_requests + _EXTRA_CONCURRENT_RPCS,
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read server.tls.{what} ({exc.strerror})") from None


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """TLS credentials; with a client CA, clients must present a certificate it signed (mTLS)."""
    assert tls.cert_file is not None and tls.key_file is not None
    key_mode = os.stat(tls.key_file).st_mode if tls.key_file.exists() else 0
    if key_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("server.tls.key_file is readable by group or others; chmod 600 it")
    key, cert = _read(tls.key_file, "key_file"), _read(tls.cert_file, "cert_file")
    client_ca = _read(tls.client_ca_file, "client_ca_file") if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _prepare_unix_socket(path: str) -> None:
    """Removes a stale socket left by a previous run; refuses to replace anything that is not a socket."""
    p = Path(path)
    if p.is_socket():
        p.unlink()
    elif p.exists():
        raise ConfigError("server.listen: the unix socket path exists and is not a socket")


def bind(server: grpc.aio.Server, s: ServerSettings) -> tuple[str, str]:
    """Binds the listen address; returns (address, description). Raises ConfigError on failure."""
    kind, host, port = parse_listen(s.listen)
    creds = server_credentials(s.tls) if s.tls.enabled else None
    if kind == "unix":
        _prepare_unix_socket(host)
        address = f"unix:{host}"
    else:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound_port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError:
        raise ConfigError(f"server.listen: cannot bind {address} (in use or not permitted)") from None
    if kind == "unix":
        os.chmod(host, 0o660)  # owner and group only
        return address, "unix socket, owner and group only"
    if port == 0:
        address = address.rsplit(":", 1)[0] + f":{bound_port}"
    if creds is None:
        return address, "plaintext, loopback only" if is_loopback(host) else "plaintext"
    return address, "mutual TLS" if s.tls.client_ca_file is not None else "TLS"
