"""Identity-derived prefix-cache partition keys (SC-4; docs in ../shared/design/ISOLATION.md).

Every generation is sent to the engine with a cache salt derived from a server secret and the tenant id
(HKDF-SHA256, domain-separated, the tenant length-prefixed). vLLM mixes the salt into the first block's
hash, so every block hash differs between tenants: a tenant can only hit prefix-cache blocks its own
requests created. The salt never leaves the server and no request can set it (the auth interceptor
refuses salt and tenant metadata and unknown request fields).

A tenant whose policy sets ``prefix_cache_scope = "principal"`` has its private blocks keyed per principal
instead: ``principal_key`` derives a cache key from the same secret under a label of its own, the tenant and
the principal id (both length-prefixed), so two principals of one tenant never share a block and a principal
key is unrelated to every tenant key. Its KV budget stays the tenant's (the tag carries both keys,
``bastion.isolation.tag``).

The same secret, under labels of their own, gives the EngineCore's block-hashing key (``block_key``) and the
front door's replica-routing key (``routing_secret``, for ``bastion.cluster.routing``).

The secret is 32 random bytes in ``isolation.partition_key_file`` (default ``<cache_dir>/keys/partition.key``,
created 0600 on first start). Replacing it changes every salt (the cache is simply cold afterwards).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.errors import ConfigError
from bastion.files import atomic_write

INFO_PREFIX = b"bastion kv partition v1\x00"
PRINCIPAL_INFO_PREFIX = b"bastion kv principal partition v1\x00"
BLOCK_KEY_INFO = b"bastion kv block key v1"
ROUTING_KEY_INFO = b"bastion cluster routing key v1"
SALT = b"bastion.kv.partition.salt.v1"
KEY_BYTES = 32
# Principal keys kept for reuse; past this many the memo starts over (a policy lists at most 100,000).
MAX_MEMO = 4096


def _read_key(path: Path) -> bytes:
    try:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError("isolation.partition_key_file must not be readable by group or others (chmod 600)")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read isolation.partition_key_file ({exc.strerror})") from None
    if len(data) != KEY_BYTES:
        raise ConfigError(f"isolation.partition_key_file must hold exactly {KEY_BYTES} bytes")
    return data


#: Where the partition secret is when ``isolation.partition_key_file`` is unset (under the cache directory).
DEFAULT_KEY_FILE = Path("keys") / "partition.key"


def key_file(configured: Path | None, cache_dir: Path) -> Path:
    """The partition secret's file: the configured one, else :data:`DEFAULT_KEY_FILE` under ``cache_dir``
    (create it only then: a configured file that is missing is an error, never a new secret)."""
    return configured if configured is not None else cache_dir / DEFAULT_KEY_FILE


def load_or_create(path: Path, *, create: bool) -> bytes:
    """The secret at ``path``; with ``create``, a new one is written (0600, directory 0700) when absent."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Published whole or not at all; a concurrent start that created it first wins (same secret for both).
        with contextlib.suppress(FileExistsError):
            atomic_write(path, secrets.token_bytes(KEY_BYTES), mode=0o600, overwrite=False)
    return _read_key(path)


def block_key(secret: bytes) -> bytes:
    """The EngineCore's block-hashing key (``bastion.engine.vllm.block_hasher``), derived from the same secret."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=BLOCK_KEY_INFO).derive(secret)


def routing_secret(secret: bytes) -> bytes:
    """The front door's replica-routing key (``bastion.cluster.routing``), derived from the same secret under a
    label of its own: routing keys are unrelated to block keys, salts and principal keys."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=ROUTING_KEY_INFO).derive(secret)


class PartitionKeys:
    def __init__(self, secret: bytes, source: Path | None = None) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError("partition secret must be 32 bytes")
        self._secret = secret
        self._cache: dict[str, str] = {}
        self._principal_cache: dict[tuple[str, str], str] = {}
        # The file the secret came from: the EngineCore reads it too (BASTION_PARTITION_KEY_FILE).
        self.source = source

    def routing_secret(self) -> bytes:
        """``routing_secret`` of this secret: the key of the front door's ``RoutingKeyer``."""
        return routing_secret(self._secret)

    def salt_for(self, tenant: str) -> str:
        """64 hex characters, stable for (secret, tenant), unrelated across tenants."""
        salt = self._cache.get(tenant)
        if salt is None:
            t = tenant.encode("utf-8")
            info = INFO_PREFIX + len(t).to_bytes(8, "big") + t
            salt = HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=info).derive(self._secret).hex()
            self._cache[tenant] = salt
        return salt

    def principal_key(self, tenant: str, principal: str) -> str:
        """64 hex characters, stable for (secret, tenant, principal): the prefix-cache key of one principal
        of a tenant with ``prefix_cache_scope = "principal"``; unrelated to every tenant key and to the other
        principals' keys."""
        memo = self._principal_cache
        key = memo.get((tenant, principal))
        if key is None:
            t, p = tenant.encode("utf-8"), principal.encode("utf-8")
            info = PRINCIPAL_INFO_PREFIX + len(t).to_bytes(8, "big") + t + len(p).to_bytes(8, "big") + p
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=info).derive(self._secret).hex()
            if len(memo) >= MAX_MEMO:
                memo.clear()
            memo[(tenant, principal)] = key
        return key

    def cache_key(self, tenant: str, principal: str, scope: str) -> str:
        """The key of the blocks after the public prefix: the tenant key for scope ``tenant`` (the default),
        the principal's key for ``principal``. Any other scope is a programming error (the policy is
        validated), so it raises rather than falling back to a shared key."""
        if scope == "tenant":
            return self.salt_for(tenant)
        if scope == "principal":
            return self.principal_key(tenant, principal)
        raise ValueError(f"unknown prefix_cache_scope {scope!r}")
