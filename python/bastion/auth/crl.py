"""Client-certificate revocation: a CRL file checked on every call that arrives with a client certificate.

gRPC's TLS has no CRL option, so revocation is checked here, on the TLS-verified leaf
(``bastion.auth.mtls.peer_certificate``), before any credential of the call is looked at:
``auth.mtls.crl_file`` holds one DER CRL or one or more PEM CRLs (``-----BEGIN X509 CRL-----``). Each must be
signed by a certificate of ``server.tls.client_ca_file`` whose subject is the CRL's issuer (and whose key
usage, when it has one, allows CRL signing); a CRL that verifies against none, a delta CRL, or one scoped by
an issuing distribution point (indirect, CA-only, attribute-only, some reasons) is refused. Then:

* a client certificate whose issuer (matched by name) has a CRL and whose serial number is on it: ``Unauthenticated``
  ("revoked client certificate"), audited as an authentication failure like any other;
* a client certificate whose issuer has no CRL in the file: refused ("no crl for the certificate's
  issuer"), as OpenSSL's CRL check does: with a CRL file, revocation status is never unknown;
* a CRL past its ``nextUpdate``: every certificate of its issuer is refused ("revocation list expired")
  until a newer one is installed, logged at ERROR once.

The refusal covers the whole call whatever credential it carries (a bearer token does not make a revoked
connection good), as if the handshake had failed. The files' (inode, size, mtime) are compared at most every
``RELOAD_CHECK_S`` on the calling thread; a changed CRL (or client CA) that fails to load keeps the previous
CRL and is logged once per change. At start a missing, malformed, unsigned or expired CRL is a
``ConfigError``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from bastion.errors import ConfigError, Unauthenticated
from bastion.files import file_stamps, read_regular

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 16 << 20
MAX_CA_BYTES = 4 << 20
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def _refuse(detail: str) -> Unauthenticated:
    return Unauthenticated(detail, public="invalid credentials")


@dataclass(frozen=True)
class _IssuerCrl:
    revoked: frozenset[int]
    next_update: dt.datetime | None


def _read(path: Path, what: str, limit: int) -> bytes:
    try:
        return read_regular(path, limit)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path} ({exc.strerror})") from None


def _parse_crls(data: bytes, path: Path) -> list[x509.CertificateRevocationList]:
    try:
        blocks = _PEM_CRL.findall(data)
        if blocks:
            return [x509.load_pem_x509_crl(b) for b in blocks]
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise ConfigError(f"auth.mtls.crl_file {path}: not a PEM or DER certificate revocation list") from None


def _check_scope(crl: x509.CertificateRevocationList, path: Path) -> None:
    """Only complete, direct CRLs: a delta CRL or one limited by its issuing distribution point would leave
    revocations out of what this file says."""
    try:
        values = [e.value for e in crl.extensions]
    except ValueError:
        raise ConfigError(f"auth.mtls.crl_file {path}: a CRL has a malformed extension") from None
    for v in values:
        if isinstance(v, x509.DeltaCRLIndicator):
            raise ConfigError(f"auth.mtls.crl_file {path}: delta CRLs are not supported (install the full CRL)")
        if isinstance(v, x509.IssuingDistributionPoint) and (
            v.indirect_crl or v.only_contains_ca_certs or v.only_contains_attribute_certs or v.only_some_reasons
        ):
            raise ConfigError(f"auth.mtls.crl_file {path}: a CRL limited by its issuing distribution point")


def _signed_by_a_client_ca(crl: x509.CertificateRevocationList, cas: list[x509.Certificate]) -> bool:
    for ca in cas:
        if ca.subject != crl.issuer:
            continue
        try:
            usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.crl_sign:
                continue
        except x509.ExtensionNotFound:
            pass
        except ValueError:  # a malformed extension: not a signer
            continue
        try:
            if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type] # X25519/X448 keys cannot sign: they raise
                return True
        except (TypeError, ValueError, UnsupportedAlgorithm):
            continue
    return False


def load_crls(crl_file: Path, ca_file: Path) -> dict[x509.Name, _IssuerCrl]:
    """Issuer name → its revoked serial numbers; ``ConfigError`` for anything the module refuses."""
    crls = _parse_crls(_read(crl_file, "auth.mtls.crl_file", MAX_CRL_BYTES), crl_file)
    try:
        cas = x509.load_pem_x509_certificates(_read(ca_file, "server.tls.client_ca_file", MAX_CA_BYTES))
    except ValueError:
        raise ConfigError(f"server.tls.client_ca_file {ca_file}: not PEM certificates") from None
    out: dict[x509.Name, _IssuerCrl] = {}
    for crl in crls:
        _check_scope(crl, crl_file)
        if not _signed_by_a_client_ca(crl, cas):
            raise ConfigError(
                f"auth.mtls.crl_file {crl_file}: a CRL is not signed by a certificate of server.tls.client_ca_file "
                f"named as its issuer ({crl.issuer.rfc4514_string()[:200]})"
            )
        try:
            revoked = frozenset(r.serial_number for r in crl)
        except ValueError:
            raise ConfigError(f"auth.mtls.crl_file {crl_file}: a CRL has a malformed entry") from None
        prev = out.get(crl.issuer)
        nxt = crl.next_update_utc
        if prev is not None:  # two CRLs of one issuer: every serial either names stays revoked
            revoked |= prev.revoked
            nxt = None if prev.next_update is None or nxt is None else max(prev.next_update, nxt)
        out[crl.issuer] = _IssuerCrl(revoked, nxt)
    return out


class RevocationList:
    """The CRLs of ``crl_file``, verified against ``ca_file``, reloaded when either file changes."""

    RELOAD_CHECK_S = 1.0

    def __init__(
        self,
        crl_file: Path,
        ca_file: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._crl_file, self._ca_file = crl_file, ca_file
        self._clock, self._now = clock, now
        self._stamp = self._stamps()
        self._checked = clock()
        self._by_issuer = load_crls(crl_file, ca_file)
        expired = [n for n, c in self._by_issuer.items() if c.next_update is not None and c.next_update < now()]
        if expired:
            raise ConfigError(
                f"auth.mtls.crl_file {crl_file}: the CRL of {expired[0].rfc4514_string()[:200]} is past its "
                "nextUpdate; install a current one"
            )
        self._expired_logged: set[x509.Name] = set()
        self.reloads = 0

    def _stamps(self) -> tuple[tuple[int, int, int], ...]:
        return file_stamps((self._crl_file, self._ca_file))

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < self.RELOAD_CHECK_S:
            return
        self._checked = now
        stamp = self._stamps()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._by_issuer = load_crls(self._crl_file, self._ca_file)
        except ConfigError as exc:
            log.error("client certificate CRL changed but cannot be loaded; keeping the previous one: %s", exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bad file must never break authentication: keep the old CRL
            log.error(
                "client certificate CRL changed but cannot be loaded (%s); keeping the previous one", type(exc).__name__
            )
            return
        self._expired_logged.clear()
        self.reloads += 1
        log.info("client certificate CRL reloaded (%d issuer(s))", len(self._by_issuer))

    def check(self, cert: x509.Certificate) -> None:
        """Raises ``Unauthenticated`` unless ``cert``'s issuer has a current CRL that does not list it."""
        self._maybe_reload()
        crl = self._by_issuer.get(cert.issuer)
        if crl is None:
            raise _refuse("no crl for the certificate's issuer")
        if crl.next_update is not None and crl.next_update < self._now():
            if cert.issuer not in self._expired_logged:
                self._expired_logged.add(cert.issuer)
                log.error(
                    "the client certificate CRL of %s is past its nextUpdate: refusing its certificates",
                    cert.issuer.rfc4514_string()[:200],
                )
            raise _refuse("revocation list expired")
        if cert.serial_number in crl.revoked:
            raise _refuse("revoked client certificate")
