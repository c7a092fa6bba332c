"""The audit package's exceptions: the log's, and opt-in content logging's."""

from __future__ import annotations

from bastion.errors import BastionError, Unavailable


class AuditUnavailable(Unavailable):
    """The audit log cannot make a record durable (a write or fsync failed, or it is closed).

    Fail closed: once raised for a write failure it is raised by every later append, and no request may be
    answered without its record.
    """

    public_default = "audit log unavailable"


class ContentLogError(BastionError):
    """A tenant's opted-in content could not be kept (``bastion.audit.content``). The call fails (INTERNAL) with
    its audit record saying so: a tenant that asked for its content to be kept is never answered without it."""
