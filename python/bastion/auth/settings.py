"""``[auth]`` settings: mutual TLS principals, JWT (OIDC) verification, the API key store.

Every field is bounded and unknown keys are refused. A server starts only with at least one method
configured (``bastion.server.security``): mTLS needs a client CA (``server.tls.client_ca_file`` or
``http.tls.client_ca_file``, the same file where both are set) and ``auth.mtls.enabled``,
JWT needs ``auth.jwt.issuer``, API keys need ``auth.api_keys.file``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.urls import check_service_url

_FROZEN = ConfigDict(frozen=True, extra="forbid")

# SPIFFE trust domain: lower-case letters, digits, '.', '-', '_' (SPIFFE-ID spec section 2.1).
TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]{1,255}$")

JwtAlgorithm = Literal["RS256", "ES256", "EdDSA"]
JwtClaim = Literal["exp", "iat", "nbf", "sub", "jti"]
DEFAULT_ALGORITHMS: tuple[JwtAlgorithm, ...] = ("RS256", "ES256", "EdDSA")
DEFAULT_CLAIMS: tuple[JwtClaim, ...] = ("exp", "iat", "sub")
# JWS "typ" header values taken as access tokens: RFC 9068's "at+jwt" and the generic "JWT" most IdPs send.
DEFAULT_TOKEN_TYPES: tuple[str, ...] = ("at+jwt", "JWT")
TOKEN_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}(?:/[A-Za-z0-9!#$&^_.+-]{1,64})?$")


class MtlsAuthSettings(BaseModel):
    """``[auth.mtls]``: principals from client certificates (where a listener's ``tls.client_ca_file`` is set)."""

    model_config = _FROZEN
    enabled: bool = Field(
        default=True,
        description="use the client certificate as the principal when no "
        "bearer credential is sent (only where server.tls or http.tls has client_ca_file)",
    )
    trust_domains: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="SPIFFE trust domains whose ids are accepted (exact, lower case); none: no SPIFFE id is",
    )
    allow_subject_fallback: bool = Field(
        default=False,
        description="a certificate without a SPIFFE id maps to x509:<RFC 4514 subject>",
    )
    crl_file: Path | None = Field(
        default=None,
        description="certificate revocation list(s) (PEM or DER) signed by the client CA (tls.client_ca_file); a client "
        "certificate it revokes, or whose issuer it has no CRL for, is refused (reloaded when it changes)",
    )

    @field_validator("trust_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        for d in v:
            if not TRUST_DOMAIN_RE.fullmatch(d):
                raise ValueError("auth.mtls.trust_domains: each 1 to 255 characters of [a-z0-9._-]")
        return v


class JwtSettings(BaseModel):
    """``[auth.jwt]``: bearer JWTs from one issuer, verified against its JWKS. On when ``issuer`` is set."""

    model_config = _FROZEN
    issuer: str = Field(default="", max_length=1024, description="required iss claim; empty: JWT off")
    audiences: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="the aud claim must name one of these (required with issuer)",
    )
    algorithms: list[JwtAlgorithm] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS),
        min_length=1,
        max_length=3,
        description="accepted signature algorithms (asymmetric only; never none or HS*)",
    )
    jwks_file: Path | None = Field(default=None, description="JWKS file (re-read on rotation); or jwks_url")
    jwks_url: str = Field(
        default="",
        max_length=2048,
        description="JWKS URL: https (http only for a loopback host); or jwks_file",
    )
    jwks_ca_file: Path | None = Field(default=None, description="CA bundle for jwks_url; None: system CAs")
    jwks_cache_s: float = Field(default=300.0, ge=1.0, le=86400.0, description="JWKS cache lifetime")
    jwks_min_refresh_s: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="at most one JWKS refetch per this many seconds (an unknown kid triggers one: key rotation)",
    )
    jwks_timeout_s: float = Field(default=5.0, gt=0.0, le=60.0, description="JWKS fetch timeout")
    leeway_s: int = Field(default=30, ge=0, le=300, description="clock skew allowed for exp, nbf and iat")
    max_token_bytes: int = Field(default=8192, ge=256, le=8192, description="longest bearer credential accepted")
    required_claims: list[JwtClaim] = Field(
        default_factory=lambda: list(DEFAULT_CLAIMS),
        max_length=5,
        description="claims a token must carry (iss and aud always are); must include exp and sub",
    )
    token_types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TOKEN_TYPES),
        min_length=1,
        max_length=8,
        description="accepted typ header values (case-insensitive, 'application/' optional); another typ "
        "(id+jwt, logout+jwt, secevent+jwt...) is refused",
    )
    require_typ: bool = Field(
        default=False,
        description="refuse tokens without a typ header (RFC 7519 makes it optional; some IdPs omit it)",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, v: list[str]) -> list[str]:
        if any(not 1 <= len(a) <= 1024 for a in v):
            raise ValueError("auth.jwt.audiences: each 1 to 1024 characters")
        return v

    @field_validator("token_types")
    @classmethod
    def _token_types(cls, v: list[str]) -> list[str]:
        if any(not TOKEN_TYPE_RE.fullmatch(t) for t in v):
            raise ValueError("auth.jwt.token_types: each a media type of 1 to 64 characters (e.g. at+jwt)")
        return v

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v:
            check_jwks_url(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> JwtSettings:
        if "exp" not in self.required_claims or "sub" not in self.required_claims:
            raise ValueError("auth.jwt.required_claims must include exp and sub")
        sources = (self.jwks_file is not None) + bool(self.jwks_url)
        if not self.enabled:
            if sources or self.audiences:
                raise ValueError("auth.jwt.audiences, jwks_file and jwks_url need auth.jwt.issuer")
            return self
        if not self.audiences:
            raise ValueError("auth.jwt.audiences: at least one is required with auth.jwt.issuer")
        if sources != 1:
            raise ValueError("auth.jwt: set exactly one of jwks_file and jwks_url")
        if self.jwks_min_refresh_s > self.jwks_cache_s:
            raise ValueError("auth.jwt.jwks_min_refresh_s must not exceed auth.jwt.jwks_cache_s")
        return self


def check_jwks_url(url: str) -> None:
    """Raises ValueError unless ``url`` is https, or http to a loopback host (``localhost`` or a loopback IP
    literal), without credentials (``bastion.urls``)."""
    check_service_url(url, "auth.jwt.jwks_url")


class ApiKeySettings(BaseModel):
    """``[auth.api_keys]``: the API key store (``bastion api-keys issue/revoke/list``)."""

    model_config = _FROZEN
    file: Path | None = Field(default=None, description="API key store (JSON, 0600); re-read when it changes")


class AuthSettings(BaseModel):
    """``[auth]``."""

    model_config = _FROZEN
    mtls: MtlsAuthSettings = MtlsAuthSettings()
    jwt: JwtSettings = JwtSettings()
    api_keys: ApiKeySettings = ApiKeySettings()
    public_health: bool = Field(default=True, description="grpc.health.v1 answers without credentials")
