"""Every call → one principal, or ``Unauthenticated``: there are no anonymous calls.

Rules, in order:

0. Where ``auth.mtls.crl_file`` is set, a call whose TLS client certificate is revoked (or not covered by
   a current CRL) is refused before anything else, whatever credential it carries (``bastion.auth.crl``).
1. ``authorization`` metadata. At most one entry; ASCII, no control characters, at most
   ``auth.jwt.max_token_bytes`` of credential; scheme ``Bearer`` (any case) and one space. A credential
   starting ``bst_`` is an API key (``auth.api_keys.file``), anything else a JWT (``auth.jwt``). A
   credential for a method that is not configured is refused, and a bad credential is refused even when
   the connection also has a client certificate (no fallback).
2. No ``authorization``: the TLS-verified client certificate (``bastion.auth.mtls``), where
   ``server.tls.client_ca_file`` or ``http.tls.client_ca_file`` is set and ``auth.mtls.enabled``.
3. Nothing: refused.

Refusals are ``Unauthenticated`` with a fixed public message ("authentication required" when nothing was
presented, else "invalid credentials") and ``detail``, a reason category for the audit log ("expired
token", "revoked api key", "untrusted trust domain", ...). Neither ever holds a credential.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from bastion.auth.api_keys import KEY_PREFIX, ApiKeyStore
from bastion.auth.crl import RevocationList
from bastion.auth.jwt_verify import JwtVerifier
from bastion.auth.mtls import peer_certificate, principal_from_certificate
from bastion.auth.principal import Principal
from bastion.auth.settings import AuthSettings
from bastion.errors import ConfigError, Unauthenticated

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
_SCHEME = "bearer "


def _refuse(detail: str) -> Unauthenticated:
    return Unauthenticated(detail, public="invalid credentials")


class Authenticator:
    """Built once at start from ``[auth]``; ``client_ca`` says whether the listener verifies client
    certificates (``Settings.client_ca_file``: ``server.tls`` or ``http.tls``); ``client_ca_file``, that file, verifies the CRLs of
    ``auth.mtls.crl_file`` (required with it)."""

    def __init__(self, settings: AuthSettings, *, client_ca: bool, client_ca_file: Path | None = None) -> None:
        self.settings = settings
        self.mtls = settings.mtls if client_ca and settings.mtls.enabled else None
        self.revocations: RevocationList | None = None
        if settings.mtls.crl_file is not None:
            if not client_ca or client_ca_file is None:
                raise ConfigError(
                    "auth.mtls.crl_file needs server.tls.client_ca_file or http.tls.client_ca_file (mutual TLS)"
                )
            self.revocations = RevocationList(settings.mtls.crl_file, client_ca_file)
        self.jwt = JwtVerifier(settings.jwt) if settings.jwt.enabled else None
        self.api_keys = ApiKeyStore(settings.api_keys.file) if settings.api_keys.file is not None else None
        self.max_credential = settings.jwt.max_token_bytes

    def _bearer(self, metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
        values = [v for k, v in metadata if k.lower() == AUTHORIZATION]
        if not values:
            return None
        if len(values) > 1:
            raise _refuse("duplicate authorization metadata")
        raw = values[0]
        if len(raw) > self.max_credential + len(_SCHEME):
            raise _refuse("oversized authorization metadata")
        try:
            value = raw.decode("ascii") if isinstance(raw, bytes) else raw
            value.encode("ascii")
        except (UnicodeDecodeError, UnicodeEncodeError):
            raise _refuse("malformed authorization metadata") from None
        if not value.isprintable():
            raise _refuse("malformed authorization metadata")
        if value[: len(_SCHEME)].lower() != _SCHEME:
            raise _refuse("unsupported authorization scheme")
        credential = value[len(_SCHEME) :]
        if not credential or " " in credential:
            raise _refuse("malformed authorization metadata")
        return credential

    async def _authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], auth_context: Mapping[str, Sequence[bytes]]
    ) -> Principal:
        leaf = peer_certificate(auth_context) if self.revocations is not None else None
        if leaf is not None and self.revocations is not None:
            self.revocations.check(leaf)
        credential = self._bearer(metadata)
        if credential is not None:
            if credential.startswith(KEY_PREFIX):
                if self.api_keys is None:
                    raise _refuse("api keys not configured")
                return self.api_keys.authenticate(credential)
            if self.jwt is None:
                raise _refuse("jwt not configured")
            return await self.jwt.verify_async(credential)
        if self.mtls is not None:
            cert = leaf or peer_certificate(auth_context)
            if cert is not None:
                return principal_from_certificate(cert, self.mtls)
        raise Unauthenticated("no credentials")

    async def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], auth_context: Mapping[str, Sequence[bytes]]
    ) -> Principal:
        """The call's principal; raises ``Unauthenticated`` (see the module doc). Fails closed: an
        unexpected error is a refusal too."""
        try:
            return await self._authenticate(metadata, auth_context)
        except Unauthenticated:
            raise
        except Exception as exc:  # noqa: BLE001 - fail closed, without echoing anything the caller sent
            log.error("authentication failed unexpectedly: %s", type(exc).__name__)
            raise _refuse("authentication error") from None
