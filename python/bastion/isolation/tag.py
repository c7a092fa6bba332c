"""The partition tag: what the EngineCore needs to know about a request's tenant.

The server builds one for every generation from the authenticated caller's tenant and the tenancy policy and
sends it to vLLM as ``cache_salt`` (a field bastion's API does not expose; the auth interceptor refuses any
attempt to supply it). Inside the EngineCore the block hasher and the tenant-aware scheduler decode it.

Text form: ``bst2.<tenant key, 64 hex>.<cache key, 64 hex>.<public tokens>.<kv reserved blocks>.<kv max blocks>``

- tenant key: HKDF(server partition secret, tenant id) (``bastion.tenancy.partition``); opaque, and the
  only tenant identity the engine sees; the scheduler charges the KV budget to it;
- cache key: the partition of the prefix-cache blocks after the public prefix: the tenant key itself
  (``prefix_cache_scope = "tenant"``, the default) or the principal's key, HKDF(secret, tenant, principal)
  (``"principal"``: the tenant's end users share no blocks, and still one KV budget);
- public tokens: how many leading prompt tokens are an operator-declared public prefix (block hashes of
  those tokens are shared across tenants; every later block is keyed by the cache key);
- KV budget: guaranteed reservation and burst cap in blocks (0 cap = no cap).

Server and EngineCore run the same release, so only this form decodes (``bst1``, without a cache key, is
refused like any other malformed salt: the request gets a partition of its own and the untagged budget).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VERSION = "bst2"
MAX_COUNT = 1 << 30
_KEY = re.compile(r"[0-9a-f]{64}")
# ASCII digits only (``\d`` would also take other scripts' digits, which int() reads): one spelling per tag.
_FORM = re.compile(r"bst2\.([0-9a-f]{64})\.([0-9a-f]{64})\.([0-9]{1,10})\.([0-9]{1,10})\.([0-9]{1,10})")


class TagError(ValueError):
    """A cache_salt that is not a well-formed bastion partition tag."""


@dataclass(frozen=True, slots=True)
class PartitionTag:
    tenant_key: str  # 64 lowercase hex characters
    public_tokens: int = 0
    kv_reserved_blocks: int = 0
    kv_max_blocks: int = 0  # 0 = no cap
    cache_key: str = ""  # 64 lowercase hex characters; "" = the tenant key (prefix_cache_scope "tenant")

    def __post_init__(self) -> None:
        if not _KEY.fullmatch(self.tenant_key):
            raise TagError("tenant_key must be 64 lowercase hex characters")
        if not self.cache_key:
            object.__setattr__(self, "cache_key", self.tenant_key)
        elif not _KEY.fullmatch(self.cache_key):
            raise TagError("cache_key must be 64 lowercase hex characters")
        for name in ("public_tokens", "kv_reserved_blocks", "kv_max_blocks"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_COUNT:
                raise TagError(f"{name} must be between 0 and {MAX_COUNT}")
        if self.kv_max_blocks and self.kv_reserved_blocks > self.kv_max_blocks:
            raise TagError("kv_reserved_blocks must not exceed kv_max_blocks")

    def encode(self) -> str:
        return (
            f"{VERSION}.{self.tenant_key}.{self.cache_key}."
            f"{self.public_tokens}.{self.kv_reserved_blocks}.{self.kv_max_blocks}"
        )

    @classmethod
    def decode(cls, text: str | None) -> PartitionTag:
        m = _FORM.fullmatch(text or "")
        if m is None:
            raise TagError(
                "cache_salt is not a bastion partition tag (bst2.<tenant key>.<cache key>.<public>.<reserved>.<max>)"
            )
        return cls(m.group(1), int(m.group(3)), int(m.group(4)), int(m.group(5)), cache_key=m.group(2))
