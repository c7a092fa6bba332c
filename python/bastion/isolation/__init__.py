"""Per-tenant isolation inside the shared engine (SC-4; design: ../shared/design/ISOLATION.md).

- ``tag``: the partition tag the server attaches to every engine request (tenant key, cache key: the tenant's
  or, under ``prefix_cache_scope = "principal"``, the principal's; public prefix length, KV budget), carried
  to the EngineCore in vLLM's ``cache_salt`` field, which clients can never set.
- ``block_hasher``: keyed, typed block hashing (BLAKE3 in ``bastion-core``) that replaces vLLM's prefix-cache
  block hasher inside the EngineCore (installed by the bastion vLLM plugin).
- ``public_prefixes``: operator-declared prefixes that tenants may share; nothing else is shared.
"""
