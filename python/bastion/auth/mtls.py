"""Client certificates → principals: the SPIFFE id (``spiffe://<trust domain>/<path>``) of the leaf.

The certificate chain, its validity dates and the client's possession of the key are verified by the TLS
layer before any RPC runs (``server.tls.client_ca_file``: gRPC requires and verifies a client
certificate from that CA), so this module does not re-verify them; it only reads the verified leaf from
the call's ``auth_context()`` (``x509_pem_cert``) and maps it to a principal:

* exactly one ``spiffe://`` URI SAN, well formed (SPIFFE-ID spec), whose trust domain is one of
  ``auth.mtls.trust_domains`` → that SPIFFE id. An id from another trust domain is refused (it never
  falls back to the subject).
* no SPIFFE id: ``x509:<RFC 4514 subject>`` where ``auth.mtls.allow_subject_fallback`` is on; else refused.

A leaf with an extended key usage extension must allow client authentication.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bastion.auth.principal import SPIFFE_PREFIX, Principal, mtls_principal, x509_subject_principal
from bastion.auth.settings import MtlsAuthSettings
from bastion.errors import Unauthenticated

MAX_SPIFFE_ID = 2048
MAX_SUBJECT = 1024
# SPIFFE-ID spec 2.1/2.2: lower-case trust domain; a non-empty path (a workload, not the trust domain itself)
# of segments of [A-Za-z0-9._-], none empty, "." or "..".
SPIFFE_RE = re.compile(re.escape(SPIFFE_PREFIX) + r"([a-z0-9._-]{1,255})((?:/[A-Za-z0-9._-]+)+)")
_DOT_SEGMENTS = frozenset({".", ".."})


def parse_spiffe_id(sid: str) -> tuple[str, str]:
    """(trust domain, path) of a well-formed SPIFFE id, else ``ValueError`` (SPIFFE-ID spec 2.1-2.3).

    The scheme is ``spiffe`` in lower case; the trust domain is 1-255 of ``[a-z0-9._-]`` (no upper case, port
    or user information); the path is not empty and each of its segments is 1 or more of ``[A-Za-z0-9._-]``
    and neither ``.`` nor ``..``: no empty segment (``//``, a trailing ``/``), no percent-encoding (``%2e%2e``
    is refused, never decoded), no query or fragment; at most ``MAX_SPIFFE_ID`` characters in all.
    """
    m = SPIFFE_RE.fullmatch(sid) if len(sid) <= MAX_SPIFFE_ID else None
    if m is None or any(seg in _DOT_SEGMENTS for seg in m.group(2).split("/")[1:]):
        raise ValueError("malformed spiffe id")
    return m.group(1), m.group(2)


def _refuse(detail: str) -> Unauthenticated:
    return Unauthenticated(detail, public="invalid credentials")


def peer_certificate(auth_context: Mapping[str, Sequence[bytes]]) -> x509.Certificate | None:
    """The TLS-verified client leaf certificate of a call, or None when the call has none."""
    if [bytes(v) for v in auth_context.get("transport_security_type", ())] != [b"ssl"]:
        return None
    pems = auth_context.get("x509_pem_cert", ())
    if not pems:
        return None
    if len(pems) != 1:
        raise _refuse("more than one peer certificate")
    try:
        return x509.load_pem_x509_certificate(bytes(pems[0]))
    except ValueError:
        raise _refuse("malformed client certificate") from None


def spiffe_ids(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return [u for u in uris if u[: len(SPIFFE_PREFIX)].lower() == SPIFFE_PREFIX]


def _check_client_usage(cert: x509.Certificate) -> None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        raise _refuse("certificate not for client authentication")


def principal_from_certificate(cert: x509.Certificate, settings: MtlsAuthSettings) -> Principal:
    """Raises Unauthenticated (``detail`` names the reason) when the certificate maps to no principal."""
    try:
        _check_client_usage(cert)
        ids = spiffe_ids(cert)
    except ValueError:  # a malformed extension
        raise _refuse("malformed client certificate") from None
    if len(ids) > 1:
        raise _refuse("more than one spiffe id")
    if ids:
        sid = ids[0]
        try:
            trust_domain, _path = parse_spiffe_id(sid)
        except ValueError:
            raise _refuse("malformed spiffe id") from None
        if trust_domain not in settings.trust_domains:
            raise _refuse("untrusted trust domain")
        return mtls_principal(sid)
    if not settings.allow_subject_fallback:
        raise _refuse("no spiffe id in client certificate")
    try:
        subject = cert.subject.rfc4514_string()
    except ValueError:
        raise _refuse("malformed client certificate subject") from None
    if not subject or len(subject) > MAX_SUBJECT or not subject.isprintable():
        raise _refuse("unusable client certificate subject")
    return x509_subject_principal(subject)
