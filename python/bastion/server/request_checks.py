"""Checks on a call before authentication: metadata shape, and no client-chosen tenant, salt or identity.

The tenant, the cache salt and the identity of a call come only from its credentials. Metadata keys that
look like an attempt to set them, and request messages carrying fields this server does not know (a
newer or forged schema smuggling e.g. a ``tenant`` field), are refused and audited.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from bastion.errors import InvalidArgument, PermissionDenied

MAX_METADATA_ENTRIES = 64
MAX_METADATA_VALUE_BYTES = 8192
# Exact keys, compared lower-case (gRPC lower-cases them anyway).
FORBIDDEN_KEYS = frozenset(
    {
        "tenant",
        "tenant-id",
        "x-tenant",
        "x-tenant-id",
        "x-org-id",
        "x-organization",
        "cache-salt",
        "x-cache-salt",
        "salt",
        "x-salt",
        "principal",
        "x-principal",
        "x-user",
        "x-user-id",
        "x-forwarded-user",
        "x-remote-user",
        "x-auth-request-user",
        "x-identity",
        "x-spiffe-id",
        "x-forwarded-client-cert",
    }
)
FORBIDDEN_PREFIXES = ("x-bastion-",)


def check_metadata(metadata: Sequence[tuple[str, str | bytes]]) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument("metadata", f"at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata:
        k = key.lower()
        if k in FORBIDDEN_KEYS or k.startswith(FORBIDDEN_PREFIXES):
            raise PermissionDenied(
                "identity override attempt in metadata",
                public="tenant, cache salt and identity come from credentials only",
            )
        # The authenticator bounds (and audits) the authorization value itself.
        if k != "authorization" and len(value) > MAX_METADATA_VALUE_BYTES:
            raise InvalidArgument("metadata", f"each value at most {MAX_METADATA_VALUE_BYTES} bytes")


def _has_unknown_fields(msg: Message, depth: int = 0) -> bool:
    if depth > 16:
        return True  # deeper than any bastion message: refuse
    if len(UnknownFieldSet(msg)):
        return True
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.is_repeated:
            if fd.message_type.GetOptions().map_entry:
                continue
            if any(_has_unknown_fields(v, depth + 1) for v in value):
                return True
        elif _has_unknown_fields(value, depth + 1):
            return True
    return False


def check_request_fields(request: object) -> None:
    """Refuses a request message that carries fields unknown to this server's schema."""
    if isinstance(request, Message) and _has_unknown_fields(request):
        raise PermissionDenied(
            "unknown request fields",
            public="request has fields this server does not accept (tenant, salt and identity come from credentials)",
        )
