"""The audit log's one exception."""

from __future__ import annotations

from bastion.errors import Unavailable


class AuditUnavailable(Unavailable):
    """The audit log cannot make a record durable (a write or fsync failed, or it is closed).

    Fail closed: once raised for a write failure it is raised by every later append, and no request may be
    answered without its record.
    """

    public_default = "audit log unavailable"
