"""The checks a node (or a driver) passes before Ray starts: each refusal is a ``ConfigError`` naming the
setting, never a value.

* ``cluster.node_ip`` is set (an address, checked by the settings).
* ``cluster.token_file``: a regular file (not a symlink) owned by this user, mode 0600 or 0400, holding one
  token of 32 to 1024 characters that can travel in a header. Ray's token is cluster root: whoever holds
  it runs code on every node.
* ``cluster.tls_cert_file``, ``tls_key_file``, ``tls_ca_file``: present; the key owned by this user with
  mode 0600 or 0400; the certificate valid now, issued by that CA (or one CA of the bundle, while the CA is
  rotated) and naming ``node_ip`` (gRPC checks the dialled address against it), fit for both TLS client
  and server use (Ray uses one pair both ways).
* ``cluster.temp_dir`` and ``cluster.spill_dir``: private directories (created 0700 when missing; an
  existing one must be a directory owned by this user with no group or other access, not a symlink).
  Ray makes the directories it creates world-writable (0777), so it is given subdirectories of these.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from bastion.cluster.settings import ClusterSettings
from bastion.errors import ConfigError
from bastion.files import read_regular

MAX_TOKEN_BYTES = 1024
MIN_TOKEN_CHARS = 32
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")
_MAX_PEM_BYTES = 256 * 1024
# Room for Ray's own names under <temp_dir>: /ray/session_<date>_<time>_<us>_<pid>/sockets/plasma_store takes
# up to 68 bytes, and Ray refuses a Unix socket path over 107.
MAX_TEMP_DIR_BYTES = 36


@dataclass(frozen=True)
class NodePaths:
    """What Ray is given once the checks passed (absolute paths)."""

    token_file: Path
    cert_file: Path
    key_file: Path
    ca_file: Path
    ray_temp_dir: Path
    ray_spill_dir: Path

    def ray_security_env(self) -> dict[str, str]:
        """Token auth and mutual TLS, as Ray reads them (paths only: Ray reads the token from its file), and no
        usage stats: what every node and driver process of the cluster runs with."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": str(self.cert_file),
            "RAY_TLS_SERVER_KEY": str(self.key_file),
            "RAY_TLS_CA_CERT": str(self.ca_file),
            "RAY_USAGE_STATS_ENABLED": "0",
        }


def _required(settings: ClusterSettings, name: str) -> Path:
    value = getattr(settings, name)
    if value is None:
        raise ConfigError(f"cluster.{name} is not set; a cluster node refuses to start without it")
    return Path(value).absolute()


def _owned_secret_file(path: Path, field: str) -> os.stat_result:
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cluster.{field}: {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"cluster.{field}: {path} is not a regular file (symbolic links are refused)")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"cluster.{field}: {path} is not owned by this user")
    if stat.S_IMODE(st.st_mode) not in (0o600, 0o400):
        raise ConfigError(
            f"cluster.{field}: {path} must have mode 0600 or 0400, not {stat.S_IMODE(st.st_mode):04o} (chmod 600)"
        )
    return st


def check_token_file(path: Path) -> None:
    """The token file's checks (see the module); reads the token but never returns or shows it."""
    _owned_secret_file(path, "token_file")
    try:
        raw = read_regular(path, MAX_TOKEN_BYTES)
    except OSError as exc:
        raise ConfigError(f"cluster.token_file: {path}: {exc.strerror}") from None
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"cluster.token_file: {path} is not an ASCII token") from None
    if len(token) < MIN_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        raise ConfigError(
            f"cluster.token_file: {path} must hold one token of at least {MIN_TOKEN_CHARS} characters of "
            "[A-Za-z0-9._~+/=-] (create one with `bastion cluster token`)"
        )


def _load_certs(path: Path, field: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(read_regular(path, _MAX_PEM_BYTES))
    except OSError as exc:
        raise ConfigError(f"cluster.{field}: {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"cluster.{field}: {path} is not a PEM certificate") from None
    return certs


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_tls_files(settings: ClusterSettings, cert_file: Path, key_file: Path, ca_file: Path) -> None:
    """The node certificate, key and cluster CA (see the module)."""
    for field, path in (("tls_cert_file", cert_file), ("tls_ca_file", ca_file)):
        if not path.is_file():
            raise ConfigError(f"cluster.{field}: {path} does not exist or is not a file")
    _owned_secret_file(key_file, "tls_key_file")
    cas = _load_certs(ca_file, "tls_ca_file")  # a bundle while the cluster CA is rotated (docs/cluster.md)
    cert = _load_certs(cert_file, "tls_cert_file")[0]
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError("cluster.tls_cert_file: the certificate is not valid now (expired or not yet valid)")
    issuers = [ca for ca in cas if _issued_by(cert, ca)]
    if not issuers:
        raise ConfigError("cluster.tls_cert_file: not issued by the CA in cluster.tls_ca_file")
    if not any(ca.not_valid_before_utc <= now <= ca.not_valid_after_utc for ca in issuers):
        raise ConfigError("cluster.tls_ca_file: the CA that issued cluster.tls_cert_file is not valid now")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = set(sans.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        ips = set()
    if settings.node_ip and ipaddress.ip_address(settings.node_ip) not in ips:
        raise ConfigError(
            "cluster.tls_cert_file: the certificate does not name cluster.node_ip as an IP address "
            "(issue one with `bastion cluster issue --ip`)"
        )
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages:
        raise ConfigError("cluster.tls_cert_file: the certificate must allow both TLS server and client use")


def private_dir(path: Path, field: str) -> Path:
    """``path`` as a private directory: created 0700 when missing, else it must be one (see the module)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cluster.{field}: {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"cluster.{field}: {path} is not a directory (symbolic links are refused)")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"cluster.{field}: {path} is not owned by this user")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"cluster.{field}: {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be private (chmod 700)"
        )
    return path


def check_node(settings: ClusterSettings, *, dirs: bool = True) -> NodePaths:
    """Every check of the module; returns what Ray is given. ``dirs=False``: a driver's checks (no
    directories of its own)."""
    if not settings.node_ip:
        raise ConfigError("cluster.node_ip is not set: the address other nodes reach this node at")
    token = _required(settings, "token_file")
    cert, key, ca = (_required(settings, n) for n in ("tls_cert_file", "tls_key_file", "tls_ca_file"))
    check_token_file(token)
    check_tls_files(settings, cert, key, ca)
    temp = spill = Path()
    if dirs:
        temp, spill = _required(settings, "temp_dir"), _required(settings, "spill_dir")
        if len(os.fsencode(temp)) > MAX_TEMP_DIR_BYTES:
            raise ConfigError(
                f"cluster.temp_dir: at most {MAX_TEMP_DIR_BYTES} bytes long (Ray's Unix sockets live under it)"
            )
        if temp == spill or temp in spill.parents or spill in temp.parents:
            raise ConfigError("cluster.temp_dir and cluster.spill_dir must be separate directories")
        private_dir(temp, "temp_dir")
        private_dir(spill, "spill_dir")
    return NodePaths(token, cert, key, ca, temp / "ray", spill / "ray")
