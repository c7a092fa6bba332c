"""Who is calling: the authenticated principal, the tenant the policy maps it to, and the peer.

Set by the auth interceptor for the duration of one RPC (contextvar; each grpc.aio RPC runs in its own
task). Servicers read it with :func:`current_caller`; nothing in a request can change it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from bastion.auth.principal import Principal
from bastion.observability.logs import tenant_var
from bastion.tenancy.policy import Assignment


@dataclass(frozen=True)
class Caller:
    request_id: str
    method: str
    peer: str
    principal: Principal
    assignment: Assignment

    @property
    def tenant(self) -> str:
        return self.assignment.tenant


caller_var: ContextVar[Caller | None] = ContextVar("bastion_caller", default=None)


def bind_caller(caller: Caller) -> None:
    """The running call's caller, for the servicers (:func:`current_caller`) and for every log line (its tenant)."""
    caller_var.set(caller)
    tenant_var.set(caller.tenant)


def current_caller() -> Caller:
    """The caller of the running RPC; fails closed (RuntimeError) if the interceptor did not run."""
    caller = caller_var.get()
    if caller is None:
        raise RuntimeError("no authenticated caller in this context")
    return caller
