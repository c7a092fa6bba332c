"""The partition tag: what the EngineCore needs to know about a request's tenant.

The server builds one for every generation from the authenticated caller's tenant and the tenancy policy and
sends it to vLLM as ``cache_salt`` (a field bastion's API does not expose; the auth interceptor refuses any
attempt to supply it). Inside the EngineCore the block hasher and the tenant-aware scheduler decode it.

Text form: ``bst1.<tenant key, 64 hex>.<public tokens>.<kv reserved blocks>.<kv max blocks>``

- tenant key: HKDF(server partition secret, tenant id) (``bastion.tenancy.partition``); opaque, and the
  only tenant identity the engine sees;
- public tokens: how many leading prompt tokens are an operator-declared public prefix (block hashes of
  those tokens are shared across tenants; every later block is keyed by the tenant key);
- KV budget: guaranteed reservation and burst cap in blocks (0 cap = no cap).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VERSION = "bst1"
MAX_COUNT = 1 << 30
_FORM = re.compile(r"bst1\.([0-9a-f]{64})\.(\d{1,10})\.(\d{1,10})\.(\d{1,10})")


class TagError(ValueError):
    """A cache_salt that is not a well-formed bastion partition tag."""


@dataclass(frozen=True, slots=True)
class PartitionTag:
    tenant_key: str  # 64 lowercase hex characters
    public_tokens: int = 0
    kv_reserved_blocks: int = 0
    kv_max_blocks: int = 0  # 0 = no cap

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.tenant_key):
            raise TagError("tenant_key must be 64 lowercase hex characters")
        for name in ("public_tokens", "kv_reserved_blocks", "kv_max_blocks"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_COUNT:
                raise TagError(f"{name} must be between 0 and {MAX_COUNT}")
        if self.kv_max_blocks and self.kv_reserved_blocks > self.kv_max_blocks:
            raise TagError("kv_reserved_blocks must not exceed kv_max_blocks")

    def encode(self) -> str:
        return f"{VERSION}.{self.tenant_key}.{self.public_tokens}.{self.kv_reserved_blocks}.{self.kv_max_blocks}"

    @classmethod
    def decode(cls, text: str | None) -> PartitionTag:
        m = _FORM.fullmatch(text or "")
        if m is None:
            raise TagError("cache_salt is not a bastion partition tag (bst1.<key>.<public>.<reserved>.<max>)")
        return cls(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))
