"""The one table from bastion's exceptions to gRPC status codes, and the text a client may see.

Rows are ordered most specific class first: the first row the exception is an instance of decides. A
:class:`~bastion.errors.BastionError` no row names (ConfigError, EngineError, IntegrityError, ...) is
INTERNAL; an exception that is not a BastionError falls closed to INTERNAL with the generic text, never
``str(exc)``. The message is always ``public_message``, never the detail.
"""

from __future__ import annotations

import grpc

from bastion.errors import (
    BastionError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)

INTERNAL_MESSAGE = BastionError.public_default

STATUS_TABLE: tuple[tuple[type[BastionError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),  # AuditUnavailable too
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),  # NotReleased too
    (BastionError, grpc.StatusCode.INTERNAL),
)


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The status code for any exception; unknown ones fall closed to INTERNAL."""
    for cls, code in STATUS_TABLE:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def internal_message(request_id: str) -> str:
    """What a client reads for an INTERNAL failure: the request id only (no class name, path or text)."""
    return f"{INTERNAL_MESSAGE} (request_id={request_id})"


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for any exception; unknown ones fall closed to INTERNAL."""
    if isinstance(exc, BastionError):
        return status_code(exc), exc.public_message
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
