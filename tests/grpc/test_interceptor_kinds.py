"""The auth interceptor runs the gate first, for all four RPC kinds. Unary-request handlers become
request-streaming ones (the same bytes on the wire) so that authentication runs on the headers before the
message is read; client-streaming ones (e.g. reflection) are gated before their first message is read."""

from __future__ import annotations

from types import SimpleNamespace
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

    async def authenticate(self, method: str, context: Any, rid: str) -> Any:
        if not self.allow:
            raise Unauthenticated("no credentials")
        return "principal"

    async def refused(self, *args: Any) -> None:
        return None

    async def admit(self, method: str, request: Any, context: Any, rid: str, principal: Any = None) -> Any:
        self.seen.append(request)
        if not self.allow:
            raise Unauthenticated("no credentials")
        return SimpleNamespace(tenant="tenant-a")  # a Caller, as far as the interceptor reads it


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


# What each kind is served as: unary requests are read by the gate from a request stream.
SERVED_AS = {
    "unary_unary": "stream_unary",
    "unary_stream": "stream_stream",
    "stream_unary": "stream_unary",
    "stream_stream": "stream_stream",
}


async def _one(arg: Any) -> Any:
    yield arg


async def _call(handler: Any, kind: str, arg: Any, ctx: Context) -> Any:
    fn = getattr(handler, SERVED_AS[kind])
    if kind.startswith("unary"):
        arg = _one(arg)
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
        assert getattr(handler, SERVED_AS[kind]) is not None
        ctx = Context()
        if allow:
            assert await _call(handler, kind, arg, ctx) == want
        else:
            with pytest.raises(Aborted):
                await _call(handler, kind, arg, ctx)
            assert ctx.aborted == (grpc.StatusCode.UNAUTHENTICATED, "authentication required")
        # An allowed unary request reaches the gate (field checks) after authentication; a refused one is
        # never read; a request stream is not read before the gate.
        if kind.startswith("unary"):
            assert gate.seen == ([arg] if allow else [])
        else:
            assert gate.seen == [None]
