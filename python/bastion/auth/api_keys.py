"""API keys: ``bst_<key_id>_<secret>``, stored as SHA-256 hashes in a JSON file the server re-reads.

A key is ``bst_`` + a 12-character key id (RFC 4648 base32, lower case) + ``_`` + 32 random bytes
(base64url, 43 characters). The store keeps, per key id, the principal label, the SHA-256 of the whole key
(a 256-bit random secret needs no slow hash or pepper), created/expires/revoked times and a description;
never the key. The plaintext is shown once, by ``issue``.

The store is one JSON document, mode 0600, replaced atomically (temporary file, fsync, rename, fsync of
the directory) under an exclusive ``flock`` on ``<store>.lock`` so concurrent CLI runs do not lose
updates. The server (``ApiKeyStore``) stats the file on every lookup and re-reads it when its inode, size,
mtime, ctime or mode changed, so ``revoke`` takes effect on the next call without a restart. An unreadable or
malformed store refuses every API key (fails closed) until it is fixed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bastion.auth.principal import Principal, api_key_principal
from bastion.errors import ConfigError, Unauthenticated
from bastion.files import atomic_write, exclusive_lock

log = logging.getLogger(__name__)

KEY_PREFIX = "bst_"
KEY_ID_LEN = 12
SECRET_BYTES = 32
KEY_RE = re.compile(r"bst_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")
KEY_ID_RE = re.compile(r"[a-z2-7]{12}")
KEY_LEN = len(KEY_PREFIX) + KEY_ID_LEN + 1 + 43
MAX_STORE_BYTES = 16 << 20
MAX_KEYS = 100_000
MAX_LABEL = 128
MAX_DESCRIPTION = 256
STORE_VERSION = 1
_MISSING = (0,)
_UNREADABLE = (1,)
_DUMMY_HASH = hashlib.sha256(b"bastion api key store: no such key").hexdigest()


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    principal: str
    sha256: str
    created_at: str
    expires_at: str | None = None
    revoked_at: str | None = None
    description: str = ""

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and _parse_time(self.expires_at) <= now


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_time(s: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(s)
    if t.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    return t


def _check_text(field: str, value: str, limit: int, *, empty_ok: bool) -> None:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty_ok):
        raise ConfigError(f"{field}: {'0' if empty_ok else '1'} to {limit} characters")
    if not value.isprintable():
        raise ConfigError(f"{field}: printable characters only")


# ---- the file -------------------------------------------------------------------------------------------


def _record(obj: Any) -> ApiKeyRecord:
    if not isinstance(obj, dict):
        raise ValueError("a key entry is not an object")
    rec = ApiKeyRecord(**obj)  # TypeError on unknown or missing fields
    if not KEY_ID_RE.fullmatch(rec.key_id) or not re.fullmatch(r"[0-9a-f]{64}", rec.sha256):
        raise ValueError("a key entry has a malformed key_id or sha256")
    for t in (rec.created_at, rec.expires_at, rec.revoked_at):
        if t is not None:
            _parse_time(t)
    if not isinstance(rec.principal, str) or not isinstance(rec.description, str):
        raise ValueError("a key entry has a malformed principal or description")
    return rec


def _parse_store(data: bytes) -> dict[str, ApiKeyRecord]:
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != STORE_VERSION or not isinstance(doc.get("keys"), list):
        raise ValueError(f"not an API key store (version {STORE_VERSION} with a keys list)")
    if len(doc["keys"]) > MAX_KEYS:
        raise ValueError(f"more than {MAX_KEYS} keys")
    out: dict[str, ApiKeyRecord] = {}
    for obj in doc["keys"]:
        rec = _record(obj)
        if rec.key_id in out:
            raise ValueError("duplicate key_id")
        out[rec.key_id] = rec
    return out


def _read_store(path: Path) -> dict[str, ApiKeyRecord]:
    """The store's records; a missing file is an empty store. Raises ConfigError naming the file."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_mode & 0o022:
                raise ConfigError(f"API key store is writable by group or others (chmod 600): {path}")
            data = f.read(MAX_STORE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read API key store {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_STORE_BYTES:
        raise ConfigError(f"API key store over {MAX_STORE_BYTES} bytes: {path}")
    try:
        return _parse_store(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"malformed API key store {path}: {type(exc).__name__}") from None


def _write_store(path: Path, records: dict[str, ApiKeyRecord]) -> None:
    doc = {"version": STORE_VERSION, "keys": [asdict(r) for r in records.values()]}
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    atomic_write(path, data, mode=0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, ApiKeyRecord]]:
    """Exclusive lock on ``<store>.lock`` for a read-modify-write of the store."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with exclusive_lock(path):
        yield _read_store(path)


# ---- the commands ---------------------------------------------------------------------------------------


def issue(
    store_path: Path | str, principal: str, expires_in: dt.timedelta | None = None, description: str = ""
) -> tuple[str, str]:
    """Adds a new key for ``principal`` (a label; the policy id is ``apikey:<key_id>``); returns
    ``(key_id, plaintext_key)``. The plaintext is not stored anywhere: show it once."""
    _check_text("principal", principal, MAX_LABEL, empty_ok=False)
    _check_text("description", description, MAX_DESCRIPTION, empty_ok=True)
    if expires_in is not None and expires_in <= dt.timedelta(0):
        raise ConfigError("expires_in must be positive")
    path = Path(store_path)
    with _locked(path) as records:
        if len(records) >= MAX_KEYS:
            raise ConfigError(f"API key store already holds {MAX_KEYS} keys: {path}")
        key_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:KEY_ID_LEN]
        while key_id in records:
            key_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:KEY_ID_LEN]
        secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")
        key = f"{KEY_PREFIX}{key_id}_{secret}"
        now = _now()
        records[key_id] = ApiKeyRecord(
            key_id=key_id,
            principal=principal,
            sha256=hash_key(key),
            created_at=_fmt_time(now),
            expires_at=_fmt_time(now + expires_in) if expires_in is not None else None,
            description=description,
        )
        _write_store(path, records)
    return key_id, key


def revoke(store_path: Path | str, key_id: str) -> None:
    """Marks ``key_id`` revoked (idempotent: the first revocation time stays). KeyError if unknown."""
    path = Path(store_path)
    with _locked(path) as records:
        rec = records.get(key_id)
        if rec is None:
            raise KeyError(key_id)
        if rec.revoked_at is None:
            records[key_id] = replace(rec, revoked_at=_fmt_time(_now()))
            _write_store(path, records)


def list_keys(store_path: Path | str) -> list[ApiKeyRecord]:
    """Every record, oldest first (records hold hashes, never keys)."""
    return sorted(_read_store(Path(store_path)).values(), key=lambda r: (r.created_at, r.key_id))


# ---- the server side ------------------------------------------------------------------------------------


class ApiKeyStore:
    """Verifies presented keys against the store file, re-reading it when it changes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._records: dict[str, ApiKeyRecord] | None = None
        if not self.path.is_file():
            raise ConfigError(f"auth.api_keys.file does not exist (bastion api-keys issue creates it): {self.path}")
        self._refresh()
        if self._records is None:
            raise ConfigError(f"auth.api_keys.file is unusable: {self.path}")

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, ...] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
        except FileNotFoundError:
            stamp = _MISSING
        except OSError:
            stamp = _UNREADABLE
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            records: dict[str, ApiKeyRecord] | None
            try:
                if stamp == _UNREADABLE:
                    raise ConfigError(f"cannot stat API key store {self.path}")
                records = {} if stamp == _MISSING else _read_store(self.path)
                if stamp == _MISSING:
                    log.warning("API key store %s is gone: every API key is refused", self.path)
            except ConfigError as exc:
                log.error("API key store refused; every API key is refused until it is fixed: %s", exc)
                records = None
            self._records, self._stamp = records, stamp

    def authenticate(self, presented: str) -> Principal:
        """The key's principal, or Unauthenticated (``detail`` names the reason, never the key)."""
        m = KEY_RE.fullmatch(presented) if len(presented) == KEY_LEN else None
        if m is None:
            raise Unauthenticated("malformed api key", public="invalid credentials")
        self._refresh()
        records = self._records
        if records is None:
            raise Unauthenticated("api key store unavailable", public="invalid credentials")
        digest = hash_key(presented)
        rec = records.get(m.group(1))
        # Compare against a dummy hash for unknown ids so timing does not tell which ids exist.
        matches = hmac.compare_digest(digest, rec.sha256 if rec is not None else _DUMMY_HASH)
        if rec is None:
            raise Unauthenticated("unknown api key", public="invalid credentials")
        if not matches:
            raise Unauthenticated("wrong api key secret", public="invalid credentials")
        if rec.revoked_at is not None:
            raise Unauthenticated("revoked api key", public="invalid credentials")
        if rec.expired(_now()):
            raise Unauthenticated("expired api key", public="invalid credentials")
        return api_key_principal(rec.key_id, rec.principal)
