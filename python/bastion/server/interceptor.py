"""The server interceptor that puts every RPC through the :class:`SecurityGate`.

It wraps the real handler, keeping its streaming kind, and fails closed: the wrapped behaviour runs the
gate first and aborts through the servicer context (with the request id in the trailing metadata, and
``google.rpc.RetryInfo`` on RESOURCE_EXHAUSTED) when the gate refuses. An unexpected error inside the
gate is INTERNAL, never a pass.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2

from bastion.errors import BastionError, RateLimited
from bastion.observability.logs import request_id_var
from bastion.server.caller import caller_var
from bastion.server.gate import SecurityGate
from bastion.server.ids import REQUEST_ID_METADATA_KEY, new_request_id
from bastion.server.status import grpc_status

log = logging.getLogger(__name__)


def abort_metadata(rid: str, exc: BaseException) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata for a refused call: the request id, and RetryInfo when rate limited."""
    md: list[tuple[str, str | bytes]] = [(REQUEST_ID_METADATA_KEY, rid)]
    if isinstance(exc, RateLimited):
        delay = Duration()
        delay.FromMilliseconds(max(1, int(min(exc.retry_after_s, 3600.0) * 1000)))
        info = error_details_pb2.RetryInfo(retry_delay=delay)
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=exc.public_message)
        status.details.add().Pack(info)
        md.append(("grpc-status-details-bin", status.SerializeToString()))
    return tuple(md)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, gate: SecurityGate) -> None:
        self._gate = gate

    async def _admit(self, method: str, request: object, context: grpc.aio.ServicerContext) -> None:
        rid = new_request_id()
        request_id_var.set(rid)
        try:
            caller = await self._gate.admit(method, request, context, rid)
        except BastionError as exc:
            code, message = grpc_status(exc)
            log.info("%s refused: %s (%s)", method, code.name, exc.detail or message)
            await context.abort(code, message, trailing_metadata=abort_metadata(rid, exc))
        except Exception as exc:
            log.error("%s: security gate failed: %s", method, type(exc).__name__)
            log.debug("security gate failure detail", exc_info=exc)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error (request_id={rid})",
                trailing_metadata=((REQUEST_ID_METADATA_KEY, rid),),
            )
        caller_var.set(caller)

    def _wrap(self, method: str, behavior: Callable[..., Any], *, unary_request: bool) -> Callable[..., Any]:
        """``behavior`` with the gate in front, of the same kind (coroutine or async generator). For
        client-streaming methods (reflection) the gate runs before the first message is read."""

        def request_of(arg: Any) -> Any:
            return arg if unary_request else None

        if inspect.isasyncgenfunction(behavior):

            async def gen(arg: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await self._admit(method, request_of(arg), context)
                async for item in behavior(arg, context):
                    yield item

            return gen

        async def coro(arg: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(method, request_of(arg), context)
            return await behavior(arg, context)

        return coro

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or self._gate.requirement(method) == "public":
            return handler
        des, ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary:
            wrapped = self._wrap(method, handler.unary_unary, unary_request=True)
            return grpc.unary_unary_rpc_method_handler(wrapped, des, ser)
        if handler.unary_stream:
            wrapped = self._wrap(method, handler.unary_stream, unary_request=True)
            return grpc.unary_stream_rpc_method_handler(wrapped, des, ser)
        if handler.stream_unary:
            wrapped = self._wrap(method, handler.stream_unary, unary_request=False)
            return grpc.stream_unary_rpc_method_handler(wrapped, des, ser)
        wrapped = self._wrap(method, handler.stream_stream, unary_request=False)
        return grpc.stream_stream_rpc_method_handler(wrapped, des, ser)
