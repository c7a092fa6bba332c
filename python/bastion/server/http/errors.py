"""The HTTP API's refusals: the core's status → an HTTP status and an OpenAI-shaped error body.

``{"error": {"message", "type", "param", "code"}}``; ``message`` is the same client-safe text the gRPC API
sends (``public_message``, or ``internal error (request_id=...)``), with the field named as the HTTP body
names it; ``param`` is that field. 429 and 503 carry ``Retry-After`` when the server knows when to retry (a
rate limit's refill, a replica lost under the call), 429 for a full server ``Retry-After: 1``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import grpc

from bastion.errors import InvalidArgument, NotFound, Overloaded, RateLimited, Unavailable
from bastion.server.http.requests import http_field
from bastion.server.status import grpc_status

# gRPC status → (HTTP status, OpenAI error type).
HTTP_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (403, "permission_error"),  # a model not released to tenants
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
    grpc.StatusCode.INTERNAL: (500, "server_error"),
}


class PayloadTooLarge(InvalidArgument):
    """The body is over ``http.max_body_bytes`` (413); INVALID_ARGUMENT in the audit log."""


class BodyTimeout(InvalidArgument):
    """The body did not arrive within ``http.body_timeout_s`` (408); INVALID_ARGUMENT in the audit log."""


class MethodNotAllowed(NotFound):
    """A known path with another verb (405); NOT_FOUND in the audit log."""

    public_default = "method not allowed for this route"


@dataclass(frozen=True)
class HttpError:
    status: int
    body: bytes
    retry_after_s: float | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        h = [(b"content-type", b"application/json")]
        if self.retry_after_s is not None:
            h.append((b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode()))
        return h


def _body(message: str, kind: str, param: str | None, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def from_status(
    code: grpc.StatusCode, message: str, retry_after_s: float | None = None, param: str | None = None
) -> HttpError:
    status, kind = HTTP_STATUS.get(code, (500, "server_error"))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after_s is None:
        retry_after_s = 1.0
    return HttpError(status, _body(message, kind, param, code.name.lower()), retry_after_s)


def from_exception(exc: BaseException) -> HttpError:
    """A refusal raised before the servicer ran (the gate, the body, the translation)."""
    if isinstance(exc, PayloadTooLarge | BodyTimeout):
        status = 413 if isinstance(exc, PayloadTooLarge) else 408
        return HttpError(status, _body(exc.public_message, "invalid_request_error", exc.field, "invalid_argument"))
    if isinstance(exc, MethodNotAllowed):
        return HttpError(405, _body(exc.public_message, "invalid_request_error", None, "method_not_allowed"))
    code, message = grpc_status(exc)
    if isinstance(exc, InvalidArgument):
        param = http_field(exc.field)
        message = f"{param}: {message[len(exc.field) + 2 :]}" if message.startswith(exc.field + ": ") else message
        status, kind = HTTP_STATUS[code]
        return HttpError(status, _body(message, kind, param, "invalid_argument"))
    retry = exc.retry_after_s if isinstance(exc, RateLimited | Unavailable) else None
    if isinstance(exc, Overloaded):
        retry = 1.0
    return from_status(code, message, retry)
