"""The OpenAI-compatible HTTP API as an ASGI application over the shared core.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models`` (a tenant sees the
models its policy allows) and ``GET /health`` (public: 200 while SERVING, else 503; nothing else).

Every other path is refused, and only after authentication (401 for an anonymous caller, 404 or 405 for an
authenticated one: nobody learns which routes exist without a credential; ``/invocations`` is no route).
Order, as on the gRPC API: the audit log takes calls and the headers are checked (identity-override
headers refused) and authenticated (``SecurityGate.authenticate``) before the body is read; the body
(``application/json``, at most ``http.max_body_bytes``, within ``http.body_timeout_s``) is translated into
the ``bastion.v1`` request (``requests.py``) and admitted by the gate (tenant, role, unknown fields), and
the gRPC servicer's own ``Generate``/``ListModels`` run it: tenancy, limits, validation, admission, the
go-live gate, partition salts and the audit records are theirs. The audit record's method is the route
(``POST /v1/chat/completions``). A client that disconnects cancels its call as a gRPC cancel does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bastion.auth.principal import Principal
from bastion.config import HttpSettings
from bastion.errors import BastionError, InvalidArgument, NotFound
from bastion.observability.logs import request_id_var
from bastion.server.caller import bind_caller
from bastion.server.gate import HTTP_ROUTES, SecurityGate
from bastion.server.health import Health
from bastion.server.http.call import CallAborted, HttpCall
from bastion.server.http.errors import BodyTimeout, HttpError, MethodNotAllowed, PayloadTooLarge, from_exception
from bastion.server.http.errors import from_status as error_from_status
from bastion.server.http.requests import chat_request, completion_request, model_id, parse_json
from bastion.server.http.responses import DONE, Shape, event, models
from bastion.server.ids import new_request_id
from bastion.server.servicer import InferenceServicer
from bastion.server.status import internal_message
from bastion.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# path -> (verb, kind); the gate knows them as "<VERB> <path>" (HTTP_ROUTES, role "user").
ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("POST", "chat"),
    "/v1/completions": ("POST", "text"),
    "/v1/models": ("GET", "models"),
}
assert {f"{verb} {path}" for path, (verb, _) in ROUTES.items()} == HTTP_ROUTES
HEALTH_PATH = "/health"
# An unknown path as the audit record names it: printable ASCII, at most this many bytes.
SHOWN_PATH_BYTES = 128
# After a stream failed: time to tell the client before its connection is closed.
ERROR_EVENT_TIMEOUT_S = 1.0
JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


class ClientGone(Exception):
    """The client closed its connection."""


def _shown(raw_path: bytes) -> str:
    text = raw_path[:SHOWN_PATH_BYTES].decode("ascii", errors="replace")
    return "".join(c if 0x20 < ord(c) < 0x7F else "?" for c in text)


def _events(status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


async def _reply(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    for ev in _events(status, body, headers):
        await send(ev)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _run_until_disconnect(work: Awaitable[Any], receive: Receive) -> Any:
    """Runs ``work``; cancels it (as gRPC cancels a handler) when the client disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ClientGone
        return task.result()
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()


def _close(scope: dict[str, Any]) -> None:
    """Drops the call's connection and what it still holds unsent (the listener's hook; a client that does not
    read its response)."""
    close = scope.get("extensions", {}).get("bastion.close")
    if close is not None:
        close()


class HttpApi:
    def __init__(
        self,
        settings: HttpSettings,
        inference: InferenceServicer,
        gate: SecurityGate,
        health: Health,
        write_timeout_s: float = 30.0,
    ):
        self._settings = settings
        self._inference = inference
        self._gate = gate
        self._health = health
        # The longest a response's last bytes may wait for the client to read them (server.stream_write_timeout_s);
        # the streamed messages before them are bounded by the servicer's own write timeout.
        self._write_timeout_s = write_timeout_s

    async def _finish(self, scope: dict[str, Any], send: Send, events: list[dict[str, Any]]) -> None:
        """Sends a response's last events. uvicorn hands a large body to the transport at once, whose buffer
        (this process's memory) then waits for the client: a client that has not taken it all within the write
        timeout has its connection dropped with what is left, so no stalled reader holds a response here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._write_timeout_s
        buffered = scope.get("extensions", {}).get("bastion.buffered", lambda: 0)
        sent = False
        try:
            async with asyncio.timeout(self._write_timeout_s):
                for ev in events:
                    await send(ev)
                sent = True
                while buffered() > 0 and loop.time() < deadline:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        if not sent or buffered() > 0:
            log.info("http: the client did not read its response in %g s; connection dropped", self._write_timeout_s)
            _close(scope)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off and websockets are not served
        path, verb = scope["path"], scope["method"]
        head = len(scope.get("raw_path") or b"") + sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if head > self._settings.max_header_bytes:  # h11 bounds only a head that arrives in pieces
            body = b'{"error": {"message": "request headers too large", "type": "invalid_request_error", '
            body += b'"param": null, "code": "headers_too_large"}}'
            await _reply(send, 431, body, JSON_HEADERS + [(b"connection", b"close")])
            return
        if path == HEALTH_PATH:
            await self._health_route(verb, send)
            return
        rid = new_request_id()
        request_id_var.set(rid)
        peer_cert = scope.get("extensions", {}).get("bastion.peer_cert")
        call = HttpCall(scope["headers"], scope.get("client"), send, peer_cert)
        call.request_id = rid
        route = ROUTES.get(path)
        method = f"{verb} {path}" if route else f"{verb} {_shown(scope.get('raw_path') or path.encode())}"
        try:
            await self._serve(route, method, verb, call, rid, receive, scope)
        except BastionError as exc:  # refused before the servicer ran: audited where it was raised
            log.info("%s refused: %s", method, exc.detail or exc.public_message)
            await self._error(call, from_exception(exc), scope)
        except CallAborted as exc:  # the servicer ended the call (audited there)
            await self._error(call, error_from_status(exc.code, exc.message, exc.retry_after_s, exc.param), scope)
        except ClientGone:
            log.info("%s: the client disconnected", method)
        except Exception as exc:  # fails closed: a 500 with the request id only, never the text
            log.error("%s failed: internal error %s", method, type(exc).__name__)
            log.debug("%s internal error detail", method, exc_info=exc)
            err = error_from_status(grpc.StatusCode.INTERNAL, internal_message(rid))
            await self._error(call, err, scope)

    async def _serve(
        self,
        route: tuple[str, str] | None,
        method: str,
        verb: str,
        call: HttpCall,
        rid: str,
        receive: Receive,
        scope: dict[str, Any],
    ) -> None:
        principal = await self._gate.authenticate(method, call, rid)  # refusals audited there
        if route is None:
            await self._refuse(method, call, rid, NotFound("no such route", public="no such route"), principal)
        assert route is not None
        if verb != route[0]:
            await self._refuse(method, call, rid, MethodNotAllowed(f"{verb} on {route[0]} route"), principal)
        kind = route[1]
        if kind == "models":
            await self._models(method, call, rid, principal, receive, scope)
            return
        try:
            body = await self._body(call, receive)
            parse = chat_request if kind == "chat" else completion_request
            parsed = parse(parse_json(body), call.header("x-client-request-id") or "")
        except BastionError as exc:
            await self._refuse(method, call, rid, exc, principal)
            raise AssertionError("unreachable") from None
        caller = await self._gate.admit(method, parsed.request, call, rid, principal)
        bind_caller(caller)
        name = model_id(parsed.request.model, parsed.request.adapter)
        call.shape = Shape("chat" if kind == "chat" else "text", rid, name)
        call.shape.top, call.shape.echo, call.shape.prompt = parsed.logprobs, parsed.echo, parsed.request.prompt
        call.stream, call.include_usage = parsed.stream, parsed.include_usage
        await _run_until_disconnect(self._inference.Generate(parsed.request, call), receive)
        if call.stream:
            await self._finish(scope, call.send, [{"type": "http.response.body", "body": DONE, "more_body": False}])
        else:
            body = json.dumps(call.shape.whole(), ensure_ascii=False).encode()
            await self._finish(scope, call.send, _events(200, body, JSON_HEADERS + call.response_headers()))

    async def _models(
        self, method: str, call: HttpCall, rid: str, principal: Principal, receive: Receive, scope: dict[str, Any]
    ) -> None:
        request = pb.ListModelsRequest()
        caller = await self._gate.admit(method, request, call, rid, principal)
        bind_caller(caller)
        resp = await _run_until_disconnect(self._inference.ListModels(request, call), receive)
        body = json.dumps(models(resp)).encode()
        await self._finish(scope, call.send, _events(200, body, JSON_HEADERS + call.response_headers()))

    async def _refuse(
        self, method: str, call: HttpCall, rid: str, exc: BastionError, principal: Principal | None
    ) -> None:
        """Audits a refusal of an authenticated call (a decision record, with its tenant), then raises it."""
        tenant = ""
        if principal is not None:
            with contextlib.suppress(BastionError):  # a principal the policy does not know has no tenant
                tenant = self._gate.guard.resolve(principal.id).tenant
        await self._gate.refused(method, call, rid, exc, principal, tenant)
        raise exc

    async def _body(self, call: HttpCall, receive: Receive) -> bytes:
        limit = self._settings.max_body_bytes
        kind = (call.header("content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise InvalidArgument("content-type", "must be application/json")
        declared = call.header("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise PayloadTooLarge("body", f"at most {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._settings.body_timeout_s):
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        raise ClientGone
                    chunk = msg.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge("body", f"at most {limit} bytes")
                    chunks.append(chunk)
                    if not msg.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise BodyTimeout("body", f"must arrive within {self._settings.body_timeout_s:g} s") from None

    async def _error(self, call: HttpCall, err: HttpError, scope: dict[str, Any] | None = None) -> None:
        if not call.started:
            headers = err.headers() + [(b"cache-control", b"no-store")] + call.response_headers()
            await _reply(call.send, err.status, err.body, headers)
            return
        # The stream began (status 200 sent): one error event, then the end of the stream; a client that
        # does not read it (a stalled reader) has its connection closed.
        try:
            async with asyncio.timeout(ERROR_EVENT_TIMEOUT_S):
                await call.send({"type": "http.response.body", "body": event(json.loads(err.body)), "more_body": False})
        except TimeoutError:
            close = (scope or {}).get("extensions", {}).get("bastion.close")
            if close is not None:
                close()

    async def _health_route(self, verb: str, send: Send) -> None:
        if verb != "GET":
            await _reply(send, 405, b'{"status":"method not allowed"}', JSON_HEADERS)
            return
        serving = self._health.serving
        body = b'{"status":"SERVING"}' if serving else b'{"status":"NOT_SERVING"}'
        await _reply(send, 200 if serving else 503, body, JSON_HEADERS)
