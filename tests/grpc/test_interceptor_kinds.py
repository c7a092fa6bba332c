"""The auth interceptor keeps each handler's kind and runs the gate first, for all four RPC kinds
(client-streaming ones, e.g. reflection, are gated before their first message is read)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from bastion.errors import Unauthenticated
from bastion.server.interceptor import AuthInterceptor


class Gate:
    def __init__(self, allow: bool) -> None:
        self.allow = allow
        self.seen: list[Any] = []

    def requirement(self, method: str) -> str:
        return "admin"

    async def admit(self, method: str, request: Any, context: Any, rid: str) -> Any:
        self.seen.append(request)
        if not self.allow:
            raise Unauthenticated("no credentials")
        return object()


class Aborted(Exception):
    pass


class Context:
    def __init__(self) -> None:
        self.aborted: tuple[Any, ...] | None = None

    async def abort(self, code: grpc.StatusCode, message: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, message)
        raise Aborted


async def _unary(req: Any, ctx: Any) -> str:
    return f"u:{req}"


async def _stream_gen(arg: Any, ctx: Any) -> Any:
    yield "s1"
    yield "s2"


KINDS = {
    "unary_unary": (grpc.unary_unary_rpc_method_handler(_unary), "req", "u:req"),
    "unary_stream": (grpc.unary_stream_rpc_method_handler(_stream_gen), "req", ["s1", "s2"]),
    "stream_unary": (grpc.stream_unary_rpc_method_handler(_unary), "iter", "u:iter"),
    "stream_stream": (grpc.stream_stream_rpc_method_handler(_stream_gen), "iter", ["s1", "s2"]),
}


async def _call(handler: Any, kind: str, arg: Any, ctx: Context) -> Any:
    fn = getattr(handler, kind)
    if kind.endswith("stream"):
        return [x async for x in fn(arg, ctx)]
    return await fn(arg, ctx)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_every_kind_is_gated_and_keeps_its_kind(kind: str) -> None:
    original, arg, want = KINDS[kind]

    async def continuation(details: Any) -> Any:
        return original

    class Details:
        method = "/x.Y/Z"

    details = Details()
    for allow in (True, False):
        gate = Gate(allow)
        handler = await AuthInterceptor(gate).intercept_service(continuation, details)
        assert getattr(handler, kind) is not None
        ctx = Context()
        if allow:
            assert await _call(handler, kind, arg, ctx) == want
        else:
            with pytest.raises(Aborted):
                await _call(handler, kind, arg, ctx)
            assert ctx.aborted == (grpc.StatusCode.UNAUTHENTICATED, "authentication required")
        # Unary requests reach the gate (field checks); a request stream does not (not read yet).
        assert gate.seen == [arg if kind.startswith("unary") else None]
