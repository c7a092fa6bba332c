"""One HTTP call as the shared core sees it (``bastion.server.call.CallContext``).

Headers become the call's metadata (lower-case names, as gRPC's), so the gate checks them exactly as it
checks gRPC metadata (an ``x-tenant`` header is an identity-override attempt), and a mutual TLS
connection's verified client certificate becomes the auth context gRPC would give (``bastion.auth.mtls``
maps it to a principal; ``auth.mtls.crl_file`` revokes it). Streamed messages become
server-sent events as they are written: the first write starts the response, and a write waits while the
client does not read (uvicorn's flow control), which the core's write timeout bounds
(``server.stream_write_timeout_s``). A whole response is kept until the call ends. ``abort`` raises
:class:`CallAborted`, which the app renders as an OpenAI error.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2

from bastion.server.http.requests import http_field
from bastion.server.http.responses import Shape
from bastion.server.ids import REQUEST_ID_METADATA_KEY
from bastion.v1 import inference_pb2 as pb

Send = Callable[[dict[str, Any]], Awaitable[None]]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


class CallAborted(Exception):
    """The core ended the call with ``code`` and the client-safe ``message``."""

    def __init__(
        self, code: grpc.StatusCode, message: str, retry_after_s: float | None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.param = param


def peer_name(client: tuple[str, int] | None) -> str:
    """gRPC's peer form, which the audit log's refusal coalescing reads (address without port)."""
    if not client:
        return ""
    host, port = client
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _retry_after(trailing: Sequence[tuple[str, str | bytes]]) -> float | None:
    for key, value in trailing or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.ToMilliseconds()) / 1000
    return None


def _renamed(code: grpc.StatusCode, message: str) -> tuple[str, str | None]:
    """An INVALID_ARGUMENT's ``field: problem`` with the field as the HTTP body names it, and that field."""
    field, sep, problem = message.partition(": ")
    if code != grpc.StatusCode.INVALID_ARGUMENT or not sep or " " in field:
        return message, None
    param = http_field(field)
    return f"{param}: {problem}", param


class HttpCall:
    def __init__(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        send: Send,
        peer_cert: bytes | None = None,
    ) -> None:
        self._metadata = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in headers)
        self._peer = peer_name(client)
        # gRPC's auth context of a mutual TLS call: the verified client leaf, as bastion.auth.mtls reads it.
        self._auth: dict[str, list[bytes]] = {}
        if peer_cert:
            pem = ssl.DER_cert_to_PEM_cert(peer_cert).encode()
            self._auth = {"transport_security_type": [b"ssl"], "x509_pem_cert": [pem]}
        self.send = send
        self.request_id = ""
        self.shape: Shape | None = None
        self.stream = False
        self.include_usage = False
        self.started = False

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        return self._auth

    def peer(self) -> str:
        return self._peer

    def header(self, name: str) -> str | None:
        values = [v for k, v in self._metadata if k == name]
        return values[0] if len(values) == 1 else None

    async def send_initial_metadata(self, initial_metadata: Sequence[tuple[str, str]]) -> None:
        for key, value in initial_metadata:
            if key == REQUEST_ID_METADATA_KEY:
                self.request_id = value

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-request-id", self.request_id.encode())] if self.request_id else []

    async def write(self, message: pb.GenerateResponse) -> None:
        assert self.shape is not None
        self.shape.take(message)
        if not self.stream:
            return
        if not self.started:
            self.started = True
            headers = SSE_HEADERS + self.response_headers()
            await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        body = self.shape.chunk(message)
        if message.finish_reason and self.include_usage:
            body += self.shape.usage_chunk()
        await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, str | bytes]] = ()
    ) -> NoReturn:
        message, param = _renamed(code, details)
        raise CallAborted(code, message, _retry_after(trailing_metadata), param)

    def time_remaining(self) -> float | None:
        return None  # no deadline header on this front end
