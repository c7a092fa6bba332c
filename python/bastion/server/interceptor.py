"""The server interceptor that puts every RPC through the :class:`SecurityGate`.

It wraps the real handler and fails closed: the wrapped behaviour runs the gate first and aborts through the
servicer context (with the request id in the trailing metadata, and ``google.rpc.RetryInfo`` on
RESOURCE_EXHAUSTED) when the gate refuses. An unexpected error inside the gate is INTERNAL, never a pass.
Unary-request handlers are served as request-streaming ones so that authentication happens on the headers,
before the request message is read (see :class:`AuthInterceptor`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2

from bastion.errors import BastionError, InvalidArgument, Overloaded, RateLimited, Unavailable
from bastion.observability.logs import request_id_var
from bastion.server.caller import bind_caller
from bastion.server.gate import SecurityGate
from bastion.server.ids import REQUEST_ID_METADATA_KEY, new_request_id
from bastion.server.status import grpc_status, internal_message

log = logging.getLogger(__name__)

# gRPC's retry pushback (gRFC A6): a client's retry policy waits this many milliseconds before its next attempt.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
# Public calls (health) waiting for their request message at once, per listener: with the Watch cap
# (listener.MAIN_WATCH_CAP) they stay within the slots the main listener keeps beyond Generate's.
PUBLIC_WAITING_CAP = 32


def abort_metadata(rid: str, exc: BaseException) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata for a refused call: the request id, and when rate limited or when a retry can succeed
    elsewhere (a Serve replica died under the call) the delay twice: ``google.rpc.RetryInfo`` (for clients
    that read status details) and ``grpc-retry-pushback-ms`` (which gRPC's own retry policy honours)."""
    md: list[tuple[str, str | bytes]] = [(REQUEST_ID_METADATA_KEY, rid)]
    retry = exc.retry_after_s if isinstance(exc, (RateLimited, Unavailable)) else None
    if retry is not None:
        assert isinstance(exc, BastionError)
        delay = Duration()
        millis = max(1, int(min(retry, 3600.0) * 1000))
        delay.FromMilliseconds(millis)
        md.append((RETRY_PUSHBACK_KEY, str(millis)))
        info = error_details_pb2.RetryInfo(retry_delay=delay)
        code = code_pb2.RESOURCE_EXHAUSTED if isinstance(exc, RateLimited) else code_pb2.UNAVAILABLE
        status = status_pb2.Status(code=code, message=exc.public_message)
        status.details.add().Pack(info)
        md.append(("grpc-status-details-bin", status.SerializeToString()))
    return tuple(md)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Unary-request methods are served as request-streaming ones (the same bytes on the wire), so that the
    gate runs on the call's headers before its message is read: an anonymous call is refused at once instead
    of holding a concurrent-RPC slot while it withholds its message, an authenticated one has
    ``read_timeout_s`` to send it, and public methods (health) wait for theirs at most ``public_cap`` at a
    time on this listener."""

    def __init__(
        self, gate: SecurityGate, *, read_timeout_s: float = 10.0, public_cap: int = PUBLIC_WAITING_CAP
    ) -> None:
        self._gate = gate
        self._read_timeout_s = read_timeout_s
        self._public_cap = public_cap
        self._public_waiting = 0

    async def _abort(self, method: str, context: grpc.aio.ServicerContext, rid: str, exc: BaseException) -> NoReturn:
        if isinstance(exc, BastionError):
            code, message = grpc_status(exc)
            log.info("%s refused: %s (%s)", method, code.name, exc.detail or message)
            await context.abort(code, message, trailing_metadata=abort_metadata(rid, exc))
        log.error("%s: security gate failed: %s", method, type(exc).__name__)
        log.debug("security gate failure detail", exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            internal_message(rid),
            trailing_metadata=((REQUEST_ID_METADATA_KEY, rid),),
        )
        raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises

    async def _admit(
        self, method: str, request: object, context: grpc.aio.ServicerContext, rid: str, principal: Any = None
    ) -> None:
        try:
            caller = await self._gate.admit(method, request, context, rid, principal)
        except Exception as exc:  # noqa: BLE001 - every failure aborts the call (INTERNAL when unexpected)
            await self._abort(method, context, rid, exc)
        bind_caller(caller)

    async def _authenticate(self, method: str, context: grpc.aio.ServicerContext, rid: str) -> Any:
        try:
            return await self._gate.authenticate(method, context, rid)
        except Exception as exc:  # noqa: BLE001 - every failure aborts the call (INTERNAL when unexpected)
            await self._abort(method, context, rid, exc)

    async def _read_one(
        self, method: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, rid: str, principal: Any
    ) -> Any:
        """The call's one request message, within the read timeout; a refusal is audited like any other."""
        try:
            return await asyncio.wait_for(anext(requests), self._read_timeout_s)
        except (TimeoutError, StopAsyncIteration):
            exc = InvalidArgument("request", f"one message within {self._read_timeout_s:g} s")
        if principal is not None:
            await self._gate.refused(method, context, rid, exc, principal)
        await self._abort(method, context, rid, exc)

    async def _read_public(
        self, method: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, rid: str
    ) -> Any:
        if self._public_waiting >= self._public_cap:
            await self._abort(method, context, rid, Overloaded(f"{self._public_waiting} public calls waiting"))
        self._public_waiting += 1
        try:
            return await self._read_one(method, requests, context, rid, None)
        finally:
            self._public_waiting -= 1

    def _unary_request(self, method: str, behavior: Callable[..., Any], *, public: bool) -> Callable[..., Any]:
        """``behavior`` (a unary-request handler) as a request-streaming one: gate first, then one message."""

        async def request(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            rid = new_request_id()
            request_id_var.set(rid)
            if public:
                return await self._read_public(method, requests, context, rid)
            principal = await self._authenticate(method, context, rid)
            message = await self._read_one(method, requests, context, rid, principal)
            await self._admit(method, message, context, rid, principal)
            return message

        if inspect.isasyncgenfunction(behavior):

            async def gen(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                message = await request(requests, context)
                async for item in behavior(message, context):
                    yield item

            return gen

        async def coro(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            message = await request(requests, context)
            return await behavior(message, context)

        return coro

    def _stream_request(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        """``behavior`` (client-streaming, e.g. reflection) with the gate before its first message is read."""

        async def admit(context: grpc.aio.ServicerContext) -> None:
            rid = new_request_id()
            request_id_var.set(rid)
            await self._admit(method, None, context, rid)

        if inspect.isasyncgenfunction(behavior):

            async def gen(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await admit(context)
                async for item in behavior(requests, context):
                    yield item

            return gen

        async def coro(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            return await behavior(requests, context)

        return coro

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        public = self._gate.requirement(method) == "public"
        des, ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary:
            wrapped = self._unary_request(method, handler.unary_unary, public=public)
            return grpc.stream_unary_rpc_method_handler(wrapped, des, ser)
        if handler.unary_stream:
            wrapped = self._unary_request(method, handler.unary_stream, public=public)
            return grpc.stream_stream_rpc_method_handler(wrapped, des, ser)
        if public:
            return handler
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._stream_request(method, handler.stream_unary), des, ser)
        return grpc.stream_stream_rpc_method_handler(self._stream_request(method, handler.stream_stream), des, ser)
