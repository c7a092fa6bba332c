"""One exception hierarchy for bastion, and one table from it to gRPC status codes.

Clients see ``public_message`` only: a fixed text, or for validation errors a text naming the field and
the limit (never the offending value). Internal errors reach clients as INTERNAL with the request id.
The Rust extension raises these same classes (imported by the bindings).
"""

from __future__ import annotations

import grpc


class BastionError(Exception):
    """Base class. ``public_message`` is safe to send to a client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    public_default = "internal error"

    def __init__(self, public_message: str | None = None, *, detail: str | None = None) -> None:
        self.public_message = public_message or self.public_default
        # detail is for server logs only; it may name paths or internals but never secrets.
        self.detail = detail
        super().__init__(detail or self.public_message)


class InvalidArgument(BastionError):
    """A request field is missing, malformed or over its limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    public_default = "invalid argument"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class NotFound(BastionError):
    code = grpc.StatusCode.NOT_FOUND
    public_default = "not found"


class Overloaded(BastionError):
    """The server's bounded queue is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    public_default = "server overloaded; retry later"


class Unavailable(BastionError):
    """The engine is not ready, draining, or dead."""

    code = grpc.StatusCode.UNAVAILABLE
    public_default = "service unavailable"


class Unauthenticated(BastionError):
    code = grpc.StatusCode.UNAUTHENTICATED
    public_default = "authentication required"


class PermissionDenied(BastionError):
    code = grpc.StatusCode.PERMISSION_DENIED
    public_default = "permission denied"


class RateLimited(BastionError):
    """A tenant's request, token or stream limit is reached; ``retry_after_s`` says when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    public_default = "rate limit exceeded; retry later"

    def __init__(self, retry_after_s: float, *, detail: str | None = None) -> None:
        self.retry_after_s = max(0.0, retry_after_s)
        super().__init__(detail=detail)


class ConfigError(BastionError):
    """The configuration is invalid; raised at start, never at request time."""

    public_default = "invalid configuration"


class EngineError(BastionError):
    """The engine failed a request or died."""

    public_default = "internal error"


class IntegrityError(BastionError):
    """A digest, signature, tag or format check failed (raised by the Rust core too)."""

    public_default = "integrity check failed"


class FormatError(IntegrityError):
    """A file is malformed (header, index, size)."""

    public_default = "malformed input"


class NativeIOError(BastionError):
    """An I/O error inside the Rust core (path and OS error in the detail)."""

    public_default = "I/O error"


class AlreadyFinalized(BastionError):
    """A native streaming object was used after finalize() or after a failed update."""

    public_default = "object already finalized"


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for any exception; unknown ones fall closed to INTERNAL."""
    if isinstance(exc, BastionError):
        return exc.code, exc.public_message
    return grpc.StatusCode.INTERNAL, BastionError.public_default
