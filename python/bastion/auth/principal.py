"""The authenticated identity of one call.

Principal ids, the strings a tenancy policy lists:

* mutual TLS: the client certificate's SPIFFE id, ``spiffe://<trust domain>/<path>``; or, only where
  ``auth.mtls.allow_subject_fallback`` is on and the certificate has no SPIFFE id,
  ``x509:<RFC 4514 subject>``;
* JWT: ``jwt:<issuer>#<sub>``;
* API key: ``apikey:<key_id>``.

These spellings live here only: build ids with the ``*_principal_id`` functions and read them with
``parse_principal_id``; a policy, a CLI or a test fixture never writes the prefixes itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

AuthMethod = Literal["mtls", "jwt", "api_key"]
#: The kinds of principal id, by their prefix.
PrincipalKind = Literal["spiffe", "x509", "jwt", "apikey"]

SPIFFE_PREFIX = "spiffe://"
X509_PREFIX = "x509:"
JWT_PREFIX = "jwt:"
API_KEY_PREFIX = "apikey:"
_KINDS: tuple[tuple[str, PrincipalKind], ...] = (
    (SPIFFE_PREFIX, "spiffe"),
    (X509_PREFIX, "x509"),
    (JWT_PREFIX, "jwt"),
    (API_KEY_PREFIX, "apikey"),
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Principal:
    """``id`` is what policies match; ``subject`` is a readable name (SPIFFE id, subject DN, JWT ``sub``,
    API key label); ``claims`` keeps a few non-secret facts for the audit log (JWT iss/sub/aud/exp...)."""

    id: str
    method: AuthMethod
    subject: str
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.claims, MappingProxyType):
            object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))


def spiffe_principal_id(trust_domain: str, path: str) -> str:
    """``spiffe://<trust_domain><path>`` (``path`` starts with ``/``): the id of a SPIFFE client certificate."""
    return f"{SPIFFE_PREFIX}{trust_domain}{path}"


def x509_principal_id(subject: str) -> str:
    """``x509:<RFC 4514 subject>``: a client certificate without a SPIFFE id (subject fallback)."""
    return f"{X509_PREFIX}{subject}"


def jwt_principal_id(issuer: str, sub: str) -> str:
    """``jwt:<issuer>#<sub>`` (an OIDC issuer has no fragment, so the first ``#`` ends it)."""
    return f"{JWT_PREFIX}{issuer}#{sub}"


def api_key_principal_id(key_id: str) -> str:
    """``apikey:<key_id>``: the id under which a tenancy policy lists an API key."""
    return f"{API_KEY_PREFIX}{key_id}"


def parse_principal_id(principal_id: str) -> tuple[PrincipalKind, str]:
    """The kind of a principal id and what follows its prefix (for ``jwt:``, ``<issuer>#<sub>``).

    Raises ValueError for a string of no known kind or with nothing after the prefix.
    """
    for prefix, kind in _KINDS:
        if principal_id.startswith(prefix) and len(principal_id) > len(prefix):
            return kind, principal_id[len(prefix) :]
    raise ValueError("not a principal id (expected spiffe://, x509:, jwt: or apikey:)")


def mtls_principal(spiffe_id: str) -> Principal:
    return Principal(id=spiffe_id, method="mtls", subject=spiffe_id)


def x509_subject_principal(subject: str) -> Principal:
    return Principal(id=x509_principal_id(subject), method="mtls", subject=subject)


def jwt_principal(issuer: str, sub: str, claims: Mapping[str, Any]) -> Principal:
    return Principal(id=jwt_principal_id(issuer, sub), method="jwt", subject=sub, claims=claims)


def api_key_principal(key_id: str, name: str) -> Principal:
    return Principal(id=api_key_principal_id(key_id), method="api_key", subject=name)
