"""Identity-derived prefix-cache partition keys (SC-4; docs in ../shared/design/ISOLATION.md).

Every generation is sent to the engine with a cache salt derived from a server secret and the tenant id
(HKDF-SHA256, domain-separated, the tenant length-prefixed). vLLM mixes the salt into the first block's
hash, so every block hash differs between tenants: a tenant can only hit prefix-cache blocks its own
requests created. The salt never leaves the server and no request can set it (the auth interceptor
refuses salt and tenant metadata and unknown request fields).

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
BLOCK_KEY_INFO = b"bastion kv block key v1"
SALT = b"bastion.kv.partition.salt.v1"
KEY_BYTES = 32


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


class PartitionKeys:
    def __init__(self, secret: bytes, source: Path | None = None) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError("partition secret must be 32 bytes")
        self._secret = secret
        self._cache: dict[str, str] = {}
        # The file the secret came from: the EngineCore reads it too (BASTION_PARTITION_KEY_FILE).
        self.source = source

    def salt_for(self, tenant: str) -> str:
        """64 hex characters, stable for (secret, tenant), unrelated across tenants."""
        salt = self._cache.get(tenant)
        if salt is None:
            t = tenant.encode("utf-8")
            info = INFO_PREFIX + len(t).to_bytes(8, "big") + t
            salt = HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=info).derive(self._secret).hex()
            self._cache[tenant] = salt
        return salt
