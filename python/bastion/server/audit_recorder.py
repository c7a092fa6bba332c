"""Builds the server's audit records and appends them to the audit log (``bastion.audit``).

One record per RPC: a ``decision`` record when the call was refused (authentication, authorization,
rate limit, identity-override attempt, an audit log that takes no new calls), else a ``request`` record
with its outcome. Refusals are coalesced per key and window (``bastion.server.refusals``): the first in
full, the rest as one record with their count. A Generate stream also
has a ``begin`` record (kind ``decision``, ``decision`` = ``allow``, ``event`` = :data:`BEGIN`), durable
before its first delta is sent, so text never reaches a client before a record of the call exists; a
``begin`` without a ``request`` record of the same ``request_id`` is a stream the server did not finish (it
died). Decisions of the server itself (monitoring alerts and quarantines, a Serve replica admitted to or
refused traffic, and its departure) and an admin's lift of a quarantine are ``decision`` records too; a
request record names the Serve replica that ran it, when there is one. Records carry ids, counts and digests; prompt and completion
content only as tenant-keyed HMACs. The append returns once the record is durable (see docs/audit-log.md),
and the servicer awaits it before the final response, so no call is answered without its record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from bastion.assurance.release import ASSURANCE_PRINCIPAL
from bastion.audit.errors import AuditUnavailable
from bastion.auth.principal import Principal
from bastion.errors import BastionError, PermissionDenied, RateLimited, Unauthenticated
from bastion.server.refusals import RefusalCoalescer
from bastion.server.status import status_code

#: The ``event`` of a Generate stream's ``begin`` record (``decision`` = ``allow``).
BEGIN = "begin"
#: The principal of the front door's records about its Serve replicas (joins and departures).
CLUSTER_PRINCIPAL = "bastion:cluster"

_DECISION_CODES = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)


class AppendsRecords(Protocol):
    async def append(self, kind: str, fields: dict[str, Any]) -> int: ...

    def content_hmac(self, tenant: str, text: str) -> str: ...

    @property
    def accepting(self) -> bool: ...


def _event(exc: BaseException) -> str:
    if isinstance(exc, AuditUnavailable):
        return "audit_unavailable"
    if isinstance(exc, Unauthenticated):
        return "authentication_failed"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, PermissionDenied):
        detail = exc.detail or ""
        if "override" in detail or "unknown request fields" in detail:
            return "identity_override_attempt"
        return "authorization_denied"
    return "refused"


def is_decision(exc: BaseException) -> bool:
    """Whether a failure is an access decision (audited as kind "decision")."""
    return isinstance(exc, (Unauthenticated, PermissionDenied, RateLimited))


class AuditRecorder:
    def __init__(self, log: AppendsRecords, *, refusal_window_s: float = 10.0, refusal_max_keys: int = 1024) -> None:
        self.log = log
        self.refusals = RefusalCoalescer(log, window_s=refusal_window_s, max_keys=refusal_max_keys)
        # Counts each refused call (status code, event): the server's metrics (bastion_auth_refusals_total).
        self.on_refusal: Callable[[str, str], None] = lambda _code, _event: None

    @property
    def accepting(self) -> bool:
        """Whether the audit log takes new calls (not suspended for space, not below its reserve)."""
        return self.log.accepting

    async def denied(
        self,
        *,
        request_id: str,
        method: str,
        peer: str,
        principal: Principal | None,
        tenant: str,
        exc: BaseException,
        model: str = "",
    ) -> None:
        code = status_code(exc)
        event = _event(exc)
        self.on_refusal(code.name, event)  # every refused call, coalesced into a record or not
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": method,
            "peer": peer[:256],
            "decision": "deny",
            "event": event,
            "status": code.name,
            "reason": ((exc.detail if isinstance(exc, BastionError) else None) or str(code.name))[:512],
        }
        if principal is not None:
            fields["principal"] = principal.id[:1024]
            fields["auth_method"] = principal.method
        if tenant:
            fields["tenant"] = tenant
        if model:
            fields["model"] = model[:256]
        await self.refusals.refused(fields)

    async def alert(self, *, event: str, model: str, model_digest: str, reason: str, action: str) -> None:
        """A monitoring alert (drift, red-team finding) and what was done about it ("alert" or
        "quarantine"), recorded as a decision of the server itself."""
        await self.log.append(
            "decision",
            {
                "principal": ASSURANCE_PRINCIPAL,
                "decision": action,
                "event": event[:128],
                "model": model[:256],
                "model_digest": model_digest[:128],
                "reason": reason[:512],
            },
        )

    async def replica_event(
        self,
        *,
        event: str,
        replica: str,
        node: str,
        decision: str,
        reason: str,
        model: str,
        model_digest: str,
        checkpoint: str = "",
    ) -> int:
        """A Serve replica joined (``decision`` = ``admitted`` or ``refused``, ``reason`` why not) or left the
        model's deployment (``bastion.cluster.admission``): recorded before an admitted replica gets traffic.
        ``checkpoint``: the latest checkpoint of the replica's node-local chain it reported at join."""
        fields: dict[str, Any] = {
            "principal": CLUSTER_PRINCIPAL,
            "event": event,
            "replica": replica[:128],
            "model": model[:256],
            "model_digest": model_digest[:128],
        }
        for k, v in (("node", node), ("decision", decision), ("reason", reason), ("replica_checkpoint", checkpoint)):
            if v:
                fields[k] = v[:512]
        return await self.log.append("decision", fields)

    async def admin_decision(
        self,
        decision: str,
        *,
        request_id: str,
        method: str,
        peer: str,
        principal: Principal,
        model: str,
        model_digest: str,
        reason: str,
    ) -> int:
        """An admin's decision about a model (``decision`` and ``event`` both name it: ``quarantine_lifted``,
        ``drift_baseline_reset``), with who and why. Returns its seq once durable; the caller acts after (the
        server re-derives quarantines and expected drift baselines from these records at start)."""
        return await self.log.append(
            "decision",
            {
                "request_id": request_id,
                "method": method,
                "peer": peer[:256],
                "principal": principal.id[:1024],
                "auth_method": principal.method,
                "decision": decision,
                "event": decision,
                "model": model[:256],
                "model_digest": model_digest[:128],
                "reason": reason[:512],
            },
        )

    async def begin(
        self,
        *,
        request_id: str,
        method: str,
        peer: str,
        principal: Principal,
        tenant: str,
        model: str,
        model_digest: str,
        adapter: str = "",
        adapter_digest: str = "",
        client_request_id: str = "",
        prompt_tokens: int = 0,
        prompt_text: str | None = None,
    ) -> int:
        """A Generate stream was admitted and is about to send its first delta: who, which model, the prompt
        (its token count and keyed HMAC). Returns the record's seq once durable; the stream writes nothing
        before. The call's outcome follows in its ``request`` record."""
        fields: dict[str, Any] = {
            **_allowed(request_id, method, peer, principal, tenant),
            "event": BEGIN,
            "model": model[:512],
            "model_digest": model_digest[:512],
            "prompt_tokens": prompt_tokens,
        }
        for k, v in (
            ("adapter", adapter),
            ("adapter_digest", adapter_digest),
            ("client_request_id", client_request_id),
        ):
            if v:
                fields[k] = v[:512]
        if prompt_text is not None:
            fields["prompt_hmac"] = self.log.content_hmac(tenant, prompt_text)
        return await self.log.append("decision", fields)

    async def request(
        self,
        *,
        request_id: str,
        method: str,
        peer: str,
        principal: Principal,
        tenant: str,
        status: grpc.StatusCode,
        started: float,
        model: str = "",
        model_digest: str = "",
        adapter: str = "",
        adapter_digest: str = "",
        client_request_id: str = "",
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_tokens: int = 0,
        finish_reason: str = "",
        prompt_text: str | None = None,
        completion_text: str | None = None,
        reason: str = "",
        retention: str = "",
        replica: str = "",
    ) -> None:
        fields: dict[str, Any] = {
            **_allowed(request_id, method, peer, principal, tenant),
            "status": status.name,
            "latency_ms": max(0, int((time.perf_counter() - started) * 1000)),
        }
        for k, v in (
            ("model", model),
            ("model_digest", model_digest),
            ("adapter", adapter),
            ("adapter_digest", adapter_digest),
            ("client_request_id", client_request_id),
            ("finish_reason", finish_reason),
            ("reason", reason),
            ("retention", retention),
            ("replica", replica),
        ):
            if v:
                fields[k] = v[:512]
        if method.endswith("/Generate") or prompt_tokens:
            fields.update(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached_tokens=cached_tokens)
        if prompt_text is not None:
            fields["prompt_hmac"] = self.log.content_hmac(tenant, prompt_text)
        if completion_text is not None:
            fields["completion_hmac"] = self.log.content_hmac(tenant, completion_text)
        await self.log.append("request", fields)


def _allowed(request_id: str, method: str, peer: str, principal: Principal, tenant: str) -> dict[str, Any]:
    """The fields every record of an admitted call carries: who called what, from where."""
    return {
        "request_id": request_id,
        "method": method,
        "peer": peer[:256],
        "principal": principal.id[:1024],
        "auth_method": principal.method,
        "tenant": tenant,
        "decision": "allow",
    }
