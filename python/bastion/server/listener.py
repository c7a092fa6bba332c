"""The grpc.aio server object: explicit limits, TLS/mTLS credentials, and binding the listen address.

grpc.aio's ``maximum_concurrent_rpcs`` is one counter per server: each call takes a slot when it arrives,
before its method is resolved or any interceptor runs (so before authentication), and gives it back when its
handler ends; a call over the limit is answered RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!". It cannot
tell a public health Watch from a Generate. So Watch streams on this listener are capped at ``MAIN_WATCH_CAP``,
half of the slots left beyond twice the Generate admission limit, and probes have a listener of their own
(``health_listener.py``).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import grpc

from bastion.config import HealthSettings, ServerSettings, TlsSettings, is_loopback, parse_listen
from bastion.errors import ConfigError
from bastion.files import file_stamps
from bastion.server.health import WatchLimits

log = logging.getLogger(__name__)

# Non-Inference RPCs (health checks and watches) allowed on top of the admitted generations.
_EXTRA_CONCURRENT_RPCS = 64
# Health/Watch streams open at once on the main listener, whatever [health] allows: the rest of the margin
# stays for Check, ListModels, Tokenize and calls the gate refuses.
MAIN_WATCH_CAP = _EXTRA_CONCURRENT_RPCS // 2


def maximum_concurrent_rpcs(s: ServerSettings) -> int:
    return 2 * s.max_inflight_requests + _EXTRA_CONCURRENT_RPCS


def main_watch_limits(h: HealthSettings) -> WatchLimits:
    """The [health] Watch caps, bounded by ``MAIN_WATCH_CAP`` on the main listener."""
    total = min(h.max_watch_streams, MAIN_WATCH_CAP)
    return WatchLimits(total=total, per_peer=min(h.max_watch_per_peer, total), lifetime_s=h.watch_lifetime_s)


def server_options(s: ServerSettings) -> list[tuple[str, int]]:
    """Every limit explicit; nothing left at "unlimited"."""
    return [
        ("grpc.max_send_message_length", s.max_send_message_bytes),
        ("grpc.max_receive_message_length", s.max_receive_message_bytes),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", s.max_connections),
        ("grpc.server_handshake_timeout_ms", max(1, int(s.handshake_timeout_s * 1000))),
        # SO_REUSEPORT would let a second process bind the same port and silently share traffic.
        ("grpc.so_reuseport", 0),
        # Keepalive pings from clients no more often than every 10 s; idle clients are probed every 2 h.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_time_ms", 2 * 60 * 60 * 1000),
        ("grpc.max_metadata_size", 16 * 1024),
    ]


def build_server(s: ServerSettings, interceptors: list[grpc.aio.ServerInterceptor]) -> grpc.aio.Server:
    return grpc.aio.server(
        interceptors=interceptors,
        options=server_options(s),
        # Bounds everything (Tokenize, ListModels, health) beyond the Generate admission limit.
        maximum_concurrent_rpcs=maximum_concurrent_rpcs(s),
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} ({exc.strerror})") from None


class _CertReloader:
    """Serves the current certificate files; re-reads them when one changes (rotation without restart).

    gRPC calls :meth:`fetch` before every new TLS handshake. The files' (inode, size, mtime) are
    compared at most every ``RELOAD_CHECK_S``; a changed set that fails to load (half-written, key
    and certificate mismatched) keeps the previous configuration and is logged once per change.
    """

    RELOAD_CHECK_S = 1.0

    def __init__(self, tls: TlsSettings, where: str = "server.tls") -> None:
        assert tls.cert_file is not None and tls.key_file is not None
        self._paths = [p for p in (tls.key_file, tls.cert_file, tls.client_ca_file) if p is not None]
        self._tls = tls
        self._where = where
        self._stamp = self._stamps()
        self._checked = time.monotonic()
        self.initial = self._load()
        self.reloads = 0

    def _stamps(self) -> tuple[tuple[int, int, int], ...]:
        return file_stamps(self._paths)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        tls = self._tls
        assert tls.cert_file is not None and tls.key_file is not None
        key_mode = os.stat(tls.key_file).st_mode if tls.key_file.exists() else 0
        w = self._where
        if key_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s.key_file is readable by group or others; chmod 600 it", w)
        key, cert = _read(tls.key_file, f"{w}.key_file"), _read(tls.cert_file, f"{w}.cert_file")
        _check_pair(key, cert, w)
        ca = _read(tls.client_ca_file, f"{w}.client_ca_file") if tls.client_ca_file is not None else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        now = time.monotonic()
        if now - self._checked < self.RELOAD_CHECK_S:
            return None
        self._checked = now
        stamp = self._stamps()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            config = self._load()
        except ConfigError as exc:
            log.error("TLS files changed but cannot be loaded; keeping the previous ones: %s", exc)
            return None
        self.reloads += 1
        log.info("TLS certificate files changed: reloaded (new handshakes use them)")
        return config


def _check_pair(key_pem: bytes, cert_pem: bytes, where: str = "server.tls") -> None:
    """The private key must belong to the certificate (a mismatch would fail every handshake)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: key_file or cert_file is not an unencrypted PEM key / certificate") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
        raise ConfigError(f"{where}: key_file does not match cert_file")


def server_credentials(tls: TlsSettings, where: str = "server.tls") -> tuple[grpc.ServerCredentials, _CertReloader]:
    """TLS credentials that follow certificate rotation; with a client CA, clients must present a
    certificate it signed (mutual TLS). ``where`` names the settings in error messages."""
    reloader = _CertReloader(tls, where)
    creds = grpc.dynamic_ssl_server_credentials(
        reloader.initial, reloader.fetch, require_client_authentication=tls.client_ca_file is not None
    )
    return creds, reloader


def _prepare_unix_socket(path: str, section: str) -> None:
    """Removes a stale socket left by a previous run; refuses to replace anything that is not a socket."""
    p = Path(path)
    if p.is_socket():
        p.unlink()
    elif p.exists():
        raise ConfigError(f"{section}.listen: the unix socket path exists and is not a socket")


def bind(server: grpc.aio.Server, s: ServerSettings) -> tuple[str, str]:
    """Binds the listen address; returns (address, description). Raises ConfigError on failure."""
    return bind_listen(server, s.listen, s.tls, "server")


def bind_listen(server: grpc.aio.Server, listen: str, tls: TlsSettings, section: str) -> tuple[str, str]:
    """Binds ``listen`` (``[section]``) with ``tls``; returns (address, description), the address with the
    port bound when ``listen`` asked for port 0. Raises ConfigError on failure."""
    kind, host, port = parse_listen(listen)
    creds = server_credentials(tls, f"{section}.tls")[0] if tls.enabled else None
    if kind == "unix":
        _prepare_unix_socket(host, section)
        address = f"unix:{host}"
    else:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound_port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError:
        raise ConfigError(f"{section}.listen: cannot bind {address} (in use or not permitted)") from None
    if kind == "unix":
        os.chmod(host, 0o660)  # owner and group only
        return address, "unix socket, owner and group only"
    if port == 0:
        address = address.rsplit(":", 1)[0] + f":{bound_port}"
    if creds is None:
        return address, "plaintext, loopback only" if is_loopback(host) else "plaintext"
    return address, "mutual TLS" if tls.client_ca_file is not None else "TLS"
