"""Bearer JWTs (OIDC access or ID tokens) → ``jwt:<issuer>#<sub>`` principals.

Verification is PyJWT's: the signature with the issuer's JWKS key (``bastion.auth.jwks``), then ``iss``,
``aud`` (any of ``auth.jwt.audiences``), ``exp``, ``nbf`` and ``iat`` with ``leeway_s`` of skew, and the
required claims. Before that the header is checked here: the token's ``alg`` must be one of
``auth.jwt.algorithms`` (never ``none`` nor HS*: an HS256 token "signed" with the issuer's public key is
refused before any key is touched) and must equal the algorithm PyJWT bound to the selected key, so a key
of one type is never used for another. A token without ``kid`` is accepted only when the JWKS holds one
key. Errors are ``Unauthenticated`` with a fixed public message and a reason category in ``detail``;
neither ever contains the token.

Only access tokens are accepted. The ``typ`` header, compared as RFC 7515 says (case-insensitive, an
``application/`` prefix optional), must be one of ``auth.jwt.token_types`` (default ``at+jwt``, RFC 9068, and
``JWT``), so an ID token typed ``id+jwt``, a back-channel logout token (``logout+jwt``) or a security event
token (``secevent+jwt``) is refused; a token without ``typ`` is accepted unless ``auth.jwt.require_typ``
(RFC 7519 makes it optional and some IdPs omit it). A token with an ``events`` claim (a security event or
logout token, RFC 8417 section 4.3) is refused whatever its ``typ``. An ID token typed ``JWT`` is told
apart only by its audience (the OIDC client id): ``auth.jwt.audiences`` must name the API, never a client.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from bastion.auth.jwks import JwksCache
from bastion.auth.principal import Principal, jwt_principal
from bastion.auth.settings import JwtSettings
from bastion.errors import ConfigError, Unauthenticated

# Compact JWS: three base64url parts (an empty signature is left to the algorithm and signature checks).
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_SUB = 256
# Verified-token cache: entry lifetime (seconds, and never past the token's exp) and size.
VERIFIED_CACHE_S = 60.0
VERIFIED_CACHE_MAX = 4096
_AUDIT_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "azp", "client_id")

# PyJWT errors, most specific first, to the reason categories the audit log records.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired token"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "disallowed algorithm"),
    (jwt.InvalidKeyError, "unusable key"),
    (jwt.DecodeError, "malformed token"),
)


def _refuse(detail: str) -> Unauthenticated:
    return Unauthenticated(detail, public="invalid credentials")


def media_type(value: str) -> str:
    """A ``typ``/``cty`` value as RFC 7515 section 4.1.9 compares it: lower case, ``application/`` optional."""
    v = value.lower()
    return v[len("application/") :] if v.startswith("application/") else v


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return (
            f"missing claim {exc.claim}"
            if exc.claim in ("exp", "iat", "nbf", "sub", "jti", "iss", "aud")
            else "missing claim"
        )
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return "invalid token"


class JwtVerifier:
    def __init__(self, settings: JwtSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not settings.enabled:
            raise ConfigError("auth.jwt.issuer is not set")
        self._s = settings
        self._allowed = frozenset(settings.algorithms)
        self._token_types = frozenset(media_type(t) for t in settings.token_types)
        self._require = sorted({*settings.required_claims, "iss", "aud"})
        self.jwks = JwksCache(settings, clock=clock)
        # Verified tokens (SHA-256 of the token → principal, valid-until on the wall clock): a service
        # reuses one token for many calls, and a signature check costs ~0.3 ms of the event loop each.
        self._verified: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._wall = time.time

    def _header(self, token: str) -> tuple[str, str | None]:
        """(alg, kid) from the unverified header, after the checks that need no key."""
        if len(token) > self._s.max_token_bytes:
            raise _refuse("oversized token")
        if not TOKEN_RE.fullmatch(token):
            raise _refuse("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refuse("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise _refuse("disallowed algorithm")
        if kid is not None and (not isinstance(kid, str) or not 1 <= len(kid) <= 256):
            raise _refuse("malformed kid")
        typ = header.get("typ")
        if typ is None:
            if self._s.require_typ:
                raise _refuse("missing typ")
        elif not isinstance(typ, str) or media_type(typ) not in self._token_types:
            raise _refuse("not an access token")
        return alg, kid

    def _decode(self, token: str, alg: str, key: jwt.PyJWK) -> Principal:
        if key.algorithm_name != alg:
            raise _refuse("algorithm does not match key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._s.issuer,
                audience=list(self._s.audiences),
                leeway=self._s.leeway_s,
                options={"require": self._require, "strict_aud": False, "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise _refuse(_reason(exc)) from None
        if "events" in claims:  # a security event or logout token (RFC 8417 section 4.3), never an access token
            raise _refuse("not an access token")
        sub = claims["sub"]
        if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_SUB or not sub.isprintable():
            raise _refuse("malformed sub claim")
        return jwt_principal(self._s.issuer, sub, _audit_claims(claims))

    def verify(self, token: str) -> Principal:
        """The token's principal; may fetch the JWKS on this thread (use ``verify_async`` on an event loop)."""
        alg, kid = self._header(token)
        return self._decode(token, alg, self.jwks.key_for(kid))

    async def verify_async(self, token: str) -> Principal:
        """The token's principal; a JWKS fetch, when one is due, runs on a worker thread.

        A token that verified is remembered until its ``exp`` or for ``VERIFIED_CACHE_S``, whichever is
        sooner (so a key removed from the JWKS stops being honoured within that time); at most
        ``VERIFIED_CACHE_MAX`` tokens are remembered."""
        if len(token) > self._s.max_token_bytes:
            raise _refuse("oversized token")
        digest = hashlib.sha256(token.encode("ascii", "replace")).digest()
        now = self._wall()
        hit = self._verified.get(digest)
        if hit is not None:
            if hit[1] > now:
                return hit[0]
            del self._verified[digest]
        alg, kid = self._header(token)
        principal = self._decode(token, alg, await self.jwks.key_for_async(kid))
        exp = principal.claims.get("exp")
        if isinstance(exp, (int, float)):
            self._verified[digest] = (principal, min(float(exp), now + VERIFIED_CACHE_S))
            while len(self._verified) > VERIFIED_CACHE_MAX:
                self._verified.popitem(last=False)
        return principal


def _audit_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """A few non-secret claims for the audit log, bounded."""
    out: dict[str, Any] = {}
    for name in _AUDIT_CLAIMS:
        v = claims.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = v
        elif isinstance(v, str):
            out[name] = v[:256]
        elif isinstance(v, list) and all(isinstance(a, str) for a in v):
            out[name] = [a[:256] for a in v[:16]]
    return out
