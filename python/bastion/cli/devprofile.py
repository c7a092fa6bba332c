"""The local development profile (``bastion serve --dev``, used by ``make run``): secure by default.

Under ``$XDG_CONFIG_HOME/bastion/dev`` (default ``~/.config/bastion/dev``, mode 0700) it creates once:
a CA (EC P-256), a server certificate for localhost/127.0.0.1/::1, a client certificate whose SPIFFE id
is ``spiffe://bastion.local/dev/cli``, an API key store with one key (the plaintext key in
``dev.apikey``, 0600) and a tenancy policy mapping both principals to the tenant ``dev`` (the client
certificate also gets the admin role). The server then runs with mutual TLS, and the health listener on
``HEALTH_LISTEN`` (plaintext, loopback, grpc.health.v1 only: ``bastion health --health-listener``, probes
without a client certificate) and the OpenAI-compatible HTTP API on ``HTTP_LISTEN`` (HTTPS with the server
certificate; bearer API key); ``bastion generate``, ``health`` and ``admin`` use these files when no other
credentials are given. Certificates are valid for
90 days and re-issued (the server reloads them) when fewer than 7 days remain.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.auth.principal import api_key_principal_id, spiffe_principal_id
from bastion.files import atomic_write, atomic_write_text

TRUST_DOMAIN = "bastion.local"
CLIENT_SPIFFE_ID = spiffe_principal_id(TRUST_DOMAIN, "/dev/cli")
TENANT = "dev"
VALID_DAYS = 90
# The health listener of the development profile (serve --health-listen overrides it; "" turns it off).
HEALTH_LISTEN = "127.0.0.1:50052"
# The OpenAI-compatible HTTP API of the development profile, over TLS with the server certificate (serve
# --http-listen overrides it; "" turns it off). Clients use the dev API key (dev.apikey) and trust ca.pem.
HTTP_LISTEN = "127.0.0.1:8443"
RENEW_DAYS = 7


def profile_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bastion" / "dev"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _expiring(cert_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return True
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return left < dt.timedelta(days=RENEW_DAYS)


def issue_pki(d: Path) -> None:
    """A CA (key discarded), a localhost server certificate and a SPIFFE client certificate in ``d``."""
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("bastion dev CA"))
        .issuer_name(_name("bastion dev CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaves: dict[str, tuple[x509.ObjectIdentifier, list[x509.GeneralName]]] = {
        "server": (
            ExtendedKeyUsageOID.SERVER_AUTH,
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ],
        ),
        "client": (ExtendedKeyUsageOID.CLIENT_AUTH, [x509.UniformResourceIdentifier(CLIENT_SPIFFE_ID)]),
    }
    for who, (usage, sans) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"bastion dev {who}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        atomic_write(d / f"{who}.key", _key_pem(key), mode=0o600)
        atomic_write(d / f"{who}.pem", cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    atomic_write(d / "ca.pem", ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
    # The CA key is not needed again: a renewal issues a new CA. Not keeping it limits what a leak gives.


def _policy(api_principal: str) -> bytes:
    return f"""# bastion local development profile: both dev principals map to the tenant "{TENANT}".
[[principals]]
id = "{CLIENT_SPIFFE_ID}"
tenant = "{TENANT}"
roles = ["user", "admin"]

[[principals]]
id = "{api_principal}"
tenant = "{TENANT}"
roles = ["user"]

[tenants.{TENANT}]
models = ["*"]
max_tokens_per_request = 4096
max_concurrent_streams = 64
requests_per_s = 50.0
request_burst = 100
tokens_per_min = 1000000
token_burst = 200000
""".encode()


def ensure_profile(d: Path | None = None) -> dict[str, Path]:
    """Creates what is missing (or expiring); returns the profile's paths."""
    from bastion.auth.api_keys import issue

    d = d or profile_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    paths = {
        n: d / f
        for n, f in (
            ("ca", "ca.pem"),
            ("server_cert", "server.pem"),
            ("server_key", "server.key"),
            ("client_cert", "client.pem"),
            ("client_key", "client.key"),
            ("api_keys", "api-keys.json"),
            ("api_key", "dev.apikey"),
            ("policy", "tenants.toml"),
        )
    }
    if any(not paths[k].exists() for k in ("ca", "server_cert", "server_key", "client_cert", "client_key")) or any(
        _expiring(paths[k]) for k in ("ca", "server_cert", "client_cert")
    ):
        issue_pki(d)
    if not paths["api_key"].exists() or not paths["policy"].exists():
        key_id, key = issue(paths["api_keys"], f"dev key ({TENANT})", description="bastion dev profile")
        atomic_write(paths["api_key"], (key + "\n").encode(), mode=0o600)
        atomic_write(paths["policy"], _policy(api_key_principal_id(key_id)), mode=0o600)
    return paths


def server_overrides(paths: dict[str, Path]) -> dict[str, Any]:
    return {
        "server": {
            "tls": {
                "cert_file": str(paths["server_cert"]),
                "key_file": str(paths["server_key"]),
                "client_ca_file": str(paths["ca"]),
            }
        },
        "health": {"listen": HEALTH_LISTEN},
        "http": {
            "listen": HTTP_LISTEN,
            "tls": {"cert_file": str(paths["server_cert"]), "key_file": str(paths["server_key"])},
        },
        "auth": {"mtls": {"trust_domains": [TRUST_DOMAIN]}, "api_keys": {"file": str(paths["api_keys"])}},
        "tenancy": {"policy_file": str(paths["policy"])},
        # Development: the default model answers before any evaluation (start-up logs a WARNING).
        # Production keeps the default: tenants get a model only with a signed PASSED attestation.
        "assurance": {"require_attestation": False},
    }


# Where `serve --dev` last listened (server.listen as configured): client commands use the profile's files
# for exactly that target, whether it comes from --target, a config file or the default.
LISTEN_RECORD = "server.listen"


def remember_listen(listen: str) -> None:
    """Records where clients reach the development server (``serve --dev``, from its validated
    ``server.listen``, before it binds)."""
    from bastion.cli.client import local_target

    atomic_write_text(profile_dir() / LISTEN_RECORD, local_target(listen) + "\n")


def profile_for(target: str) -> dict[str, Path] | None:
    """The profile's client files when ``target`` is where the development server listens, else None."""
    record = profile_dir() / LISTEN_RECORD
    if not record.is_file() or record.read_text(errors="replace").strip() != target:
        return None
    return existing_profile()


def existing_profile() -> dict[str, Path] | None:
    """The profile's client files when they exist (for client commands), else None."""
    d = profile_dir()
    files = {"ca": d / "ca.pem", "client_cert": d / "client.pem", "client_key": d / "client.key"}
    return files if all(p.is_file() for p in files.values()) else None
