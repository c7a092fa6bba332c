"""The cluster's own certificate authority: ``bastion cluster ca`` and ``bastion cluster issue``.

Ray's mutual TLS (``RAY_USE_TLS=1``) uses one certificate per process, as server *and* as client, and checks
the peer against one CA bundle (``RAY_TLS_CA_CERT``). That CA must be dedicated to the cluster: any
certificate it signed is a member of the cluster (and, with the token, may run code on every node). So it
is never the CA of bastion's client-facing listener, nor an organisation's general CA.

``create_ca(dir)`` writes ``ca.pem`` (0644) and ``ca.key`` (EC P-256, 0600) into ``dir`` (0700), never over
existing files. ``issue(dir, name, ips)`` signs ``<name>.pem`` (0644) and ``<name>.key`` (0600) for one
node (or driver) with the CA in ``dir``: both TLS usages (Ray uses the same pair both ways) and the node's
IP addresses as subject alternative names (gRPC checks the address it dialled against them). Keep the
CA key offline once the nodes have their certificates (docs/cluster.md: rotation).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.errors import ConfigError
from bastion.files import atomic_write, read_regular

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_PEM_BYTES = 64 * 1024


@dataclass(frozen=True)
class NodeFiles:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cluster CA directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o077:
        raise ConfigError(f"cluster CA directory {path}: must be a directory of mode 0700 (not a symlink)")


def _refuse_existing(*paths: Path) -> None:
    for p in paths:
        if p.exists() or p.is_symlink():
            raise ConfigError(f"{p} already exists; the cluster CA commands never overwrite a file")


def create_ca(directory: Path, *, common_name: str = "bastion cluster CA", days: int = 365) -> NodeFiles:
    """A new cluster CA in ``directory`` (see the module); returns its certificate and key paths."""
    if not 1 <= days <= 3650:
        raise ConfigError("--days: 1 to 3650")
    _private_dir(directory)
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    _refuse_existing(cert_path, key_path)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    atomic_write(key_path, _key_pem(key), mode=0o600, overwrite=False)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, overwrite=False)
    return NodeFiles(cert_path, key_path)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(read_regular(directory / CA_CERT_NAME, _MAX_PEM_BYTES))
        key_st = os.lstat(directory / CA_KEY_NAME)
        if key_st.st_mode & 0o077:
            raise ConfigError(f"{directory / CA_KEY_NAME}: readable by group or others (chmod 600)")
        key = serialization.load_pem_private_key(read_regular(directory / CA_KEY_NAME, _MAX_PEM_BYTES), None)
    except OSError as exc:
        raise ConfigError(f"cluster CA in {directory}: {exc.strerror} ({exc.filename})") from None
    except ValueError:
        raise ConfigError(f"cluster CA in {directory}: not a PEM certificate and key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"cluster CA in {directory}: the key is not an EC key")
    return cert, key


def issue(
    directory: Path,
    name: str,
    ips: Sequence[str],
    *,
    dns_names: Sequence[str] = (),
    days: int = 90,
    out_dir: Path | None = None,
) -> NodeFiles:
    """``<name>.pem`` and ``<name>.key`` for one node, signed by the CA in ``directory`` (see the module)."""
    if not _NAME.fullmatch(name):
        raise ConfigError("node name: 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit")
    if not 1 <= days <= 825:
        raise ConfigError("--days: 1 to 825")
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError:
        raise ConfigError("--ip: an IPv4 or IPv6 address (the address the node is reached at)") from None
    if not addresses:
        raise ConfigError("--ip: at least one address (gRPC checks the dialled address against the certificate)")
    for d in dns_names:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", d):
            raise ConfigError("--dns: a host name of [A-Za-z0-9.-]")
    ca_cert, ca_key = _load_ca(directory)
    out = out_dir or directory
    _private_dir(out)
    cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
    _refuse_existing(cert_path, key_path)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(a) for a in addresses]
    sans += [x509.DNSName(d) for d in dns_names]
    end = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write(key_path, _key_pem(key), mode=0o600, overwrite=False)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, overwrite=False)
    return NodeFiles(cert_path, key_path)
