"""Builds the server's security pieces from the settings: authenticator, tenancy guard, audit log, gate.

The server refuses to start without a way to authenticate (mTLS client CA, JWT issuer or an API key
store) and without a tenancy policy, so no configuration can serve anonymously.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bastion.audit.content import ContentStore
from bastion.audit.log import AuditLog
from bastion.auth.authenticator import Authenticator
from bastion.config import Settings
from bastion.errors import ConfigError
from bastion.server.audit_recorder import AuditRecorder
from bastion.server.gate import SecurityGate
from bastion.server.interceptor import AuthInterceptor
from bastion.tenancy.guard import TenantGuard
from bastion.tenancy.partition import PartitionKeys, key_file, load_or_create
from bastion.tenancy.policy import TenancyPolicy


@dataclass
class Security:
    audit: AuditLog
    guard: TenantGuard
    recorder: AuditRecorder
    gate: SecurityGate
    interceptor: AuthInterceptor
    partition: PartitionKeys | None = None
    # Opt-in per-tenant content logging, beside the audit log; None: never.
    content: ContentStore | None = None


def check_auth_configured(settings: Settings) -> None:
    a = settings.auth
    mtls = settings.client_ca_file is not None and a.mtls.enabled
    if not (mtls or a.jwt.issuer or a.api_keys.file):
        raise ConfigError(
            "no authentication configured: set server.tls.client_ca_file or http.tls.client_ca_file (mTLS), auth.jwt.issuer or "
            "auth.api_keys.file (or run `bastion serve --dev` for the local development profile)"
        )
    if settings.tenancy.policy_file is None:
        raise ConfigError("tenancy.policy_file is required: it maps authenticated principals to tenants")


def build_security(settings: Settings, on_audit_failure: Callable[[], None], audit_sink: Any = None) -> Security:
    """Raises ConfigError naming the setting when something is missing or unreadable."""
    check_auth_configured(settings)
    assert settings.tenancy.policy_file is not None
    policy = TenancyPolicy.load(settings.tenancy.policy_file)
    guard = TenantGuard(policy)
    client_ca_file = settings.client_ca_file
    authenticator = Authenticator(settings.auth, client_ca=client_ca_file is not None, client_ca_file=client_ca_file)
    audit = AuditLog.open(settings.audit, settings.cache_dir, on_failure=on_audit_failure, sink=audit_sink)
    recorder = AuditRecorder(
        audit, refusal_window_s=settings.audit.refusal_window_s, refusal_max_keys=settings.audit.refusal_max_keys
    )
    # With a health listener for probes, Watch on the main listener needs a principal (server/gate.py).
    public_watch = not settings.health.listen
    gate = SecurityGate(
        authenticator, guard, recorder, public_health=settings.auth.public_health, public_watch=public_watch
    )
    content = ContentStore(audit.directory / "content")
    interceptor = AuthInterceptor(gate, read_timeout_s=settings.server.request_read_timeout_s)
    return Security(audit, guard, recorder, gate, interceptor, partition_keys(settings), content)


def partition_keys(settings: Settings) -> PartitionKeys:
    """The tenant partition secret, from the file the EngineCore reads too (created 0600 when defaulted)."""
    configured = settings.isolation.partition_key_file
    path = key_file(configured, settings.cache_dir)
    return PartitionKeys(load_or_create(path, create=configured is None), path)
