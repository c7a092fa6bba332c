"""The security gate every RPC passes before its handler runs: shape checks, authentication, role.

Order: metadata shape and identity-override check → request fields (unknown fields refused) →
authentication (mTLS, JWT or API key → principal) → tenancy policy (principal → tenant, roles) → the
method's role ("user" for Inference, "admin" for Admin); first of all, the audit log must take new calls
(``AuditLog.accepting``: not suspended for lack of space, not below its reserve). Any refusal is audited as a decision record
before the client hears of it, and the client gets a fixed message: UNAUTHENTICATED,
PERMISSION_DENIED or INVALID_ARGUMENT, never the reason. Health may be public (configured); every
other method needs a principal, so no RPC runs anonymously. While a health listener serves probes
(``[health] listen``), Watch here needs a principal too: a public stream that never ends would hold one of
this listener's concurrent-RPC slots (``server/listener.py``); Check stays public. The HTTP API's routes
(``HTTP_ROUTES``) need the user role, as Inference does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

from bastion.audit.errors import AuditUnavailable
from bastion.auth.principal import Principal
from bastion.errors import BastionError, PermissionDenied
from bastion.server.audit_recorder import AuditRecorder
from bastion.server.call import CallContext
from bastion.server.caller import Caller
from bastion.server.request_checks import check_metadata, check_request_fields
from bastion.tenancy.guard import TenantGuard

log = logging.getLogger(__name__)

Requirement = Literal["public", "authenticated", "user", "admin"]
HEALTH_PREFIX = "/grpc.health.v1.Health/"
HEALTH_WATCH = HEALTH_PREFIX + "Watch"
INFERENCE_PREFIX = "/bastion.v1.Inference/"
ADMIN_PREFIX = "/bastion.v1.Admin/"
# The OpenAI-compatible HTTP API's routes (bastion.server.http), as its calls name their method: users call
# them as they call Inference. Any other HTTP path is refused before this is asked.
HTTP_ROUTES = frozenset({"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models"})


class Authenticates(Protocol):
    async def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], auth_context: Mapping[str, Sequence[bytes]]
    ) -> Principal: ...


class SecurityGate:
    def __init__(
        self,
        authenticator: Authenticates,
        guard: TenantGuard,
        recorder: AuditRecorder,
        *,
        public_health: bool,
        public_watch: bool = True,
    ) -> None:
        self.authenticator = authenticator
        self.guard = guard
        self.recorder = recorder
        self.public_health = public_health
        self.public_watch = public_watch

    def requirement(self, method: str) -> Requirement:
        if method.startswith(HEALTH_PREFIX):
            public = self.public_health and (self.public_watch or method != HEALTH_WATCH)
            return "public" if public else "authenticated"
        if method.startswith(INFERENCE_PREFIX) or method in HTTP_ROUTES:
            return "user"
        if method.startswith(ADMIN_PREFIX):
            return "admin"
        return "admin"  # anything else (reflection, future services): administrators only

    def _check_audit(self) -> None:
        """No new call while the audit log cannot promise its record (disk full or below its reserve)."""
        if not self.recorder.accepting:
            raise AuditUnavailable("the audit log takes no new calls (its disk is full or below its reserve)")

    async def authenticate(self, method: str, context: CallContext, rid: str) -> Principal:
        """The principal from the call's headers alone (before its request message is read), or raises a
        BastionError after auditing the refusal: an anonymous call never waits for its message."""
        try:
            self._check_audit()
            metadata = tuple(context.invocation_metadata() or ())
            check_metadata(metadata)
            return await self.authenticator.authenticate(metadata, context.auth_context())
        except BastionError as exc:
            await self.refused(method, context, rid, exc)
            raise

    async def refused(
        self,
        method: str,
        context: CallContext,
        rid: str,
        exc: BastionError,
        principal: Principal | None = None,
        tenant: str = "",
    ) -> None:
        """Audits a refusal (a decision record) and counts it against the tenant, if known."""
        self.guard.deny(tenant or None)
        await self.recorder.denied(
            request_id=rid, method=method, peer=context.peer() or "", principal=principal, tenant=tenant, exc=exc
        )

    async def admit(
        self,
        method: str,
        request: object,
        context: CallContext,
        rid: str,
        principal: Principal | None = None,
    ) -> Caller:
        """The caller, or raises a BastionError after auditing the refusal. ``principal``: already
        authenticated from the headers (:meth:`authenticate`)."""
        peer = context.peer() or ""
        tenant = ""
        try:
            self._check_audit()
            metadata = tuple(context.invocation_metadata() or ())
            check_metadata(metadata)
            check_request_fields(request)
            if principal is None:
                principal = await self.authenticator.authenticate(metadata, context.auth_context())
            assignment = self.guard.resolve(principal.id)
            tenant = assignment.tenant
            need = self.requirement(method)
            # An evaluator calls Inference too (bastion eval), on released and evaluation-only models.
            held = assignment.roles | ({"user"} if "evaluator" in assignment.roles else set())
            if need in ("user", "admin") and need not in held:
                raise PermissionDenied(f"principal lacks the {need} role")
            return Caller(rid, method, peer, principal, assignment)
        except BastionError as exc:
            await self.refused(method, context, rid, exc, principal, tenant)
            raise
