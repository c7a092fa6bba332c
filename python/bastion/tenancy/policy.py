"""The tenancy policy: which principal belongs to which tenant with which roles, and each tenant's limits.

A TOML file (``tenancy.policy_file``), unknown keys refused::

    [[principals]]
    id = "spiffe://prod.example/ns/chat/sa/frontend"   # exact principal id (see bastion.auth.principal)
    tenant = "chat"
    roles = ["user"]                                    # "user": Inference; "admin": the Admin service;
                                                        # "evaluator": Inference, also on models not yet
                                                        # released (bastion eval, bastion.assurance)

    [tenants.chat]
    models = ["smollm2-*"]          # served model names (globs) this tenant may call; none by default
    adapters = []                   # adapter names (globs); none by default
    max_tokens_per_request = 1024
    max_concurrent_streams = 8
    requests_per_s = 5.0            # token bucket: refill rate and burst
    request_burst = 10
    tokens_per_min = 60000          # prompt + max_tokens charged at admission, unused tokens refunded
    token_burst = 20000
    kv_reserved_blocks = 0          # KV blocks guaranteed to this tenant (bastion.engine.vllm.scheduler)
    kv_max_blocks = 0               # burst cap in KV blocks; 0 = no cap
    prefix_cache_scope = "tenant"   # who shares prefix-cache blocks: "tenant" (all its principals, default) or
                                    # "principal" (each principal alone; the KV budget stays the tenant's)
    [tenants.chat.content_logging]  # off by default: the audit log keeps keyed HMACs, not content
    enabled = false
    retention_days = 0

    [[public_prefixes]]             # operator-declared prefixes whose KV blocks tenants may share
    name = "support-system-prompt"
    text = "You are the support assistant of Example Corp. ..."
    sha256 = "<hex SHA-256 of text, UTF-8>"   # pins the text: a typo cannot silently share something else

Every other prompt block is private to its tenant, or to its principal where the tenant sets
``prefix_cache_scope = "principal"`` (bastion.isolation).
The tenant of a call always comes from this mapping of the authenticated principal; nothing in a
request can choose it. A principal that is not listed is refused (PERMISSION_DENIED).
"""

from __future__ import annotations

import fnmatch
import hashlib
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bastion.errors import ConfigError

_FROZEN = ConfigDict(frozen=True, extra="forbid")
NAME = r"^[A-Za-z0-9._-]{1,64}$"
Role = Literal["user", "admin", "evaluator"]
MAX_POLICY_BYTES = 4 << 20


class ContentLogging(BaseModel):
    model_config = _FROZEN
    enabled: bool = False
    # Days content records are kept; required (1..3650) when enabled.
    retention_days: int = Field(default=0, ge=0, le=3650)

    @model_validator(mode="after")
    def _retention(self) -> ContentLogging:
        if self.enabled and self.retention_days < 1:
            raise ValueError("content_logging.enabled needs retention_days (1..3650)")
        return self


class TenantPolicy(BaseModel):
    model_config = _FROZEN
    models: list[str] = Field(default_factory=list, max_length=256)
    adapters: list[str] = Field(default_factory=list, max_length=256)
    max_tokens_per_request: int = Field(default=1024, ge=1, le=1 << 20)
    max_concurrent_streams: int = Field(default=8, ge=1, le=65536)
    requests_per_s: float = Field(default=5.0, gt=0, le=1e6)
    request_burst: int = Field(default=10, ge=1, le=1_000_000)
    tokens_per_min: int = Field(default=60_000, ge=1, le=1 << 40)
    token_burst: int = Field(default=20_000, ge=1, le=1 << 40)
    kv_reserved_blocks: int = Field(default=0, ge=0, le=1 << 30)
    kv_max_blocks: int = Field(default=0, ge=0, le=1 << 30)
    content_logging: ContentLogging = ContentLogging()
    # A raw `prompt`'s special-token strings (e.g. <|im_start|>) become special tokens only when true; message
    # contents never do.
    raw_special_tokens: bool = False
    # Who shares this tenant's prefix-cache blocks (after any public prefix): "tenant", every principal of the
    # tenant (the default: one principal can learn from cache timing what another sent), or "principal", each
    # principal alone (end users of one tenant cannot probe each other). The KV budget is the tenant's either way.
    prefix_cache_scope: Literal["tenant", "principal"] = "tenant"

    @model_validator(mode="after")
    def _kv_budget(self) -> TenantPolicy:
        if self.kv_max_blocks and self.kv_reserved_blocks > self.kv_max_blocks:
            raise ValueError("kv_reserved_blocks must not exceed kv_max_blocks (0 = no cap)")
        return self

    def allows_model(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, g) for g in self.models)

    def allows_adapter(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, g) for g in self.adapters)


class PrincipalEntry(BaseModel):
    model_config = _FROZEN
    id: str = Field(min_length=1, max_length=512)
    tenant: str = Field(pattern=NAME)
    roles: list[Role] = Field(default=["user"], min_length=1)


class PublicPrefix(BaseModel):
    model_config = _FROZEN
    name: str = Field(pattern=NAME)
    text: str = Field(min_length=1, max_length=1 << 20)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _pinned(self) -> PublicPrefix:
        if hashlib.sha256(self.text.encode("utf-8")).hexdigest() != self.sha256:
            raise ValueError("sha256 does not match the SHA-256 of text (UTF-8)")
        return self


class PolicyFile(BaseModel):
    model_config = _FROZEN
    principals: list[PrincipalEntry] = Field(default_factory=list, max_length=100_000)
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict, max_length=10_000)
    public_prefixes: list[PublicPrefix] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> PolicyFile:
        import re

        for name in self.tenants:
            if not re.match(NAME, name):
                raise ValueError("tenants: a tenant name must be 1-64 characters of [A-Za-z0-9._-]")
        seen: set[str] = set()
        for i, p in enumerate(self.principals):
            if p.id in seen:
                raise ValueError(f"principals[{i}].id: listed twice")
            seen.add(p.id)
            if p.tenant not in self.tenants:
                raise ValueError(f"principals[{i}].tenant: no [tenants.{p.tenant}] section")
        names = [p.name for p in self.public_prefixes]
        if len(set(names)) != len(names):
            raise ValueError("public_prefixes: a name is listed twice")
        return self


class Assignment(BaseModel):
    """What the policy says about one authenticated principal."""

    model_config = _FROZEN
    tenant: str
    roles: frozenset[str]
    limits: TenantPolicy


class TenancyPolicy:
    """A parsed, immutable policy; ``digest`` identifies the exact file content (audited on reload)."""

    def __init__(self, parsed: PolicyFile, digest: str) -> None:
        self.tenants = dict(parsed.tenants)
        self.public_prefixes = tuple(parsed.public_prefixes)
        self.digest = digest
        self.principal_count = len(parsed.principals)
        self._by_id = {
            p.id: Assignment(tenant=p.tenant, roles=frozenset(p.roles), limits=parsed.tenants[p.tenant])
            for p in parsed.principals
        }

    def assignment(self, principal_id: str) -> Assignment | None:
        return self._by_id.get(principal_id)

    @classmethod
    def parse(cls, data: bytes, *, source: str = "tenancy.policy_file") -> TenancyPolicy:
        if len(data) > MAX_POLICY_BYTES:
            raise ConfigError(
                f"{source}: larger than {MAX_POLICY_BYTES} bytes",
                public=f"tenancy policy: larger than {MAX_POLICY_BYTES} bytes",
            )
        try:
            raw = tomllib.loads(data.decode("utf-8"))
            parsed = PolicyFile.model_validate(raw)
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not UTF-8", public="tenancy policy: not UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            problem = f"not valid TOML ({exc.args[0] if exc.args else 'syntax'})"
            raise ConfigError(f"{source}: {problem}", public=f"tenancy policy: {problem}") from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'policy'}: {e['msg']}" for e in exc.errors()[:5]
            )
            # pydantic's messages name the field and the rule, not the input value: fit for the admin client.
            raise ConfigError(f"{source}: {problems}", public=f"tenancy policy: {problems}") from None
        return cls(parsed, "sha256:" + hashlib.sha256(data).hexdigest())

    @classmethod
    def load(cls, path: Path) -> TenancyPolicy:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read tenancy.policy_file {path} ({exc.strerror})", public="cannot read tenancy.policy_file"
            ) from None
        return cls.parse(data)
