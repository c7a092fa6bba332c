"""The issuer's JWKS: loaded from a file or an https URL, cached, refetched on rotation at a bounded rate.

Keys are parsed by PyJWT (``PyJWKSet``/``PyJWK``), which binds each key to one algorithm from its type
(RSA → RS256, EC P-256 → ES256, OKP Ed25519 → EdDSA) or its ``alg``; keys whose algorithm is not allowed
(``oct``/HS*, anything not in ``auth.jwt.algorithms``), private keys and keys not for signatures are
dropped. (PyJWKClient is not used: it cannot read a file nor cap the response size.)

Refetches: when the cache is older than ``jwks_cache_s``, or a token names a ``kid`` the cache does not
hold, but never more than once per ``jwks_min_refresh_s`` (a flood of made-up kids cannot make the server
hammer the issuer). A failed fetch keeps the cached keys until they expire; after that JWTs are refused
(fails closed) until a fetch succeeds. Fetches run on a worker thread for async callers
(``key_for_async``), one at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt

from bastion.auth.settings import JwtSettings, check_jwks_url
from bastion.errors import ConfigError, Unauthenticated

log = logging.getLogger(__name__)

JWKS_MAX_BYTES = 1 << 20
JWKS_MAX_KEYS = 100


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect could lead off https; the 3xx surfaces as an HTTPError


def _refuse(detail: str) -> Unauthenticated:
    return Unauthenticated(detail, public="invalid credentials")


class JwksCache:
    def __init__(self, settings: JwtSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._s = settings
        self._clock = clock
        self._allowed = frozenset(settings.algorithms)
        self._lock = threading.Lock()
        # (keys, fetched_at): replaced whole, so readers on other threads see one consistent pair.
        self._snapshot: tuple[tuple[jwt.PyJWK, ...], float] | None = None
        self._last_attempt: float | None = None
        self._generation = 0
        self._in_flight = False
        self._ssl: ssl.SSLContext | None = None
        if settings.jwks_url:
            try:
                check_jwks_url(settings.jwks_url)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            self._ssl = ssl.create_default_context(
                cafile=str(settings.jwks_ca_file) if settings.jwks_ca_file is not None else None
            )

    # ---- loading ----

    def _read(self) -> bytes:
        if self._s.jwks_file is not None:
            with open(self._s.jwks_file, "rb") as f:
                return f.read(JWKS_MAX_BYTES + 1)
        check_jwks_url(self._s.jwks_url)
        opener = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=self._ssl))
        req = urllib.request.Request(self._s.jwks_url, headers={"Accept": "application/json"})
        with opener.open(req, timeout=self._s.jwks_timeout_s) as resp:
            data: bytes = resp.read(JWKS_MAX_BYTES + 1)
            return data

    def _parse(self, data: bytes) -> tuple[jwt.PyJWK, ...]:
        if len(data) > JWKS_MAX_BYTES:
            raise ValueError(f"JWKS over {JWKS_MAX_BYTES} bytes")
        doc = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("JWKS is not an object with a keys list")
        if len(doc["keys"]) > JWKS_MAX_KEYS:
            raise ValueError(f"JWKS has more than {JWKS_MAX_KEYS} keys")
        usable = [
            k
            for k in doc["keys"]
            if isinstance(k, dict)
            and "d" not in k
            and k.get("use", "sig") == "sig"
            and (not isinstance(k.get("kid"), str) or len(k["kid"]) <= 256)
        ]
        if not usable:
            raise ValueError("JWKS has no public signature keys")
        keys = tuple(k for k in jwt.PyJWKSet(usable) if k.algorithm_name in self._allowed)
        if not keys:
            raise ValueError("JWKS has no key for an allowed algorithm")
        return keys

    def _may_fetch(self, now: float) -> bool:
        return self._last_attempt is None or now - self._last_attempt >= self._s.jwks_min_refresh_s

    def refresh(self, seen_generation: int) -> None:
        """Fetches the JWKS unless another fetch finished since ``seen_generation`` or the rate limit forbids."""
        with self._lock:
            now = self._clock()
            if self._generation != seen_generation or not self._may_fetch(now):
                return
            self._in_flight = True  # set before _last_attempt: lookups wait for this fetch, not refuse
            self._last_attempt = now
            try:
                keys = self._parse(self._read())
                self._snapshot = (keys, now)
                log.info("JWKS loaded: %d usable keys", len(keys))
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old keys until they expire
                log.warning("JWKS fetch failed (%s); cached keys stay until they expire", type(exc).__name__)
            finally:
                self._generation += 1
                self._in_flight = False

    # ---- lookup ----

    def _fresh_keys(self) -> tuple[jwt.PyJWK, ...] | None:
        snap = self._snapshot
        if snap is None or self._clock() - snap[1] >= self._s.jwks_cache_s:
            return None
        return snap[0]

    @staticmethod
    def _select(keys: tuple[jwt.PyJWK, ...], kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            if len(keys) == 1:
                return keys[0]
            raise _refuse("missing kid")
        found = [k for k in keys if k.key_id == kid]
        if len(found) > 1:
            raise _refuse("ambiguous kid")
        return found[0] if found else None

    def _lookup(self, kid: str | None) -> jwt.PyJWK | int:
        """The key, or the generation to refresh past; raises when no refresh is allowed."""
        keys = self._fresh_keys()
        if keys is not None:
            key = self._select(keys, kid)
            if key is not None:
                return key
        generation = self._generation
        if self._in_flight or self._may_fetch(self._clock()):
            return generation  # fetch now, or wait for the fetch under way
        return self._after_refresh(kid)  # a fetch may have finished since the first look

    def _after_refresh(self, kid: str | None) -> jwt.PyJWK:
        keys = self._fresh_keys()
        if keys is None:
            raise _refuse("jwks unavailable")
        key = self._select(keys, kid)
        if key is None:
            raise _refuse("unknown kid")
        return key

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The verification key for a token's ``kid``; may fetch (blocking) on this thread."""
        found = self._lookup(kid)
        if isinstance(found, jwt.PyJWK):
            return found
        self.refresh(found)
        return self._after_refresh(kid)

    async def key_for_async(self, kid: str | None) -> jwt.PyJWK:
        """Like ``key_for``, but a fetch runs on a worker thread, off the event loop."""
        found = self._lookup(kid)
        if isinstance(found, jwt.PyJWK):
            return found
        await asyncio.to_thread(self.refresh, found)
        return self._after_refresh(kid)
