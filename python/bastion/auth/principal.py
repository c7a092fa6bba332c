"""The authenticated identity of one call.

Principal ids, the strings a tenancy policy lists:

* mutual TLS: the client certificate's SPIFFE id, ``spiffe://<trust domain>/<path>``; or, only where
  ``auth.mtls.allow_subject_fallback`` is on and the certificate has no SPIFFE id,
  ``x509:<RFC 4514 subject>``;
* JWT: ``jwt:<issuer>#<sub>``;
* API key: ``apikey:<key_id>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

AuthMethod = Literal["mtls", "jwt", "api_key"]

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


def mtls_principal(spiffe_id: str) -> Principal:
    return Principal(id=spiffe_id, method="mtls", subject=spiffe_id)


def x509_subject_principal(subject: str) -> Principal:
    return Principal(id=f"x509:{subject}", method="mtls", subject=subject)


def jwt_principal(issuer: str, sub: str, claims: Mapping[str, Any]) -> Principal:
    return Principal(id=f"jwt:{issuer}#{sub}", method="jwt", subject=sub, claims=claims)


def api_key_principal(key_id: str, name: str) -> Principal:
    return Principal(id=f"apikey:{key_id}", method="api_key", subject=name)
