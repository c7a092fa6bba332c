"""Public health traffic cannot take what authenticated calls need (issue 14, part 3).

grpc.aio counts every open RPC of a server against one ``maximum_concurrent_rpcs``; a public
``Health/Watch`` never ends on its own. So: health on a listener of its own (``[health]``,
``bastion.server.health_listener``), Watch streams capped per peer and in total with a lifetime on both
listeners, and on the main listener health holds at most ``MAIN_WATCH_CAP`` of the slots beyond twice the
Generate admission limit.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import make_pki
from grpc_harness import Running, collect, make_settings, prompt_request, running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion.cli import client
from bastion.server.health_listener import MAX_CONCURRENT_STREAMS
from bastion.server.listener import MAIN_WATCH_CAP, maximum_concurrent_rpcs
from bastion.v1 import admin_pb2 as apb
from bastion.v1 import admin_pb2_grpc as apb_grpc
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from cli_util import run_cli
from fakes import FakeEngine
from identity import aio_bearer

SERVING = health_pb2.HealthCheckResponse.SERVING
# maximum_concurrent_rpcs of the main listener with the default max_inflight_requests (128): the limit the
# red team's 340 Watch streams exhausted.
OLD_LIMIT = 2 * 128 + 64
FLOOD = OLD_LIMIT + 20
WIDE_OPEN = {"max_watch_streams": 4096, "max_watch_per_peer": 4096}  # caps a careless operator might set


@asynccontextmanager
async def watches(
    target: str,
    n: int,
    *,
    connections: int = 4,
    credentials: grpc.ChannelCredentials | None = None,
    key: str | None = None,
) -> AsyncIterator[tuple[list[grpc.aio.UnaryStreamCall], Counter[str]]]:
    """``n`` Watch streams on ``target`` over ``connections`` connections (a connection carries at most
    server.max_concurrent_streams streams); yields the calls and their outcomes ("open" once the first
    status arrived, else the status code's name); cancels them and closes the connections on exit."""
    interceptors = aio_bearer(key) if key else None
    channels = []
    for i in range(connections):
        options = [("grpc.use_local_subchannel_pool", 1), ("bastion.test.connection", i)]
        if credentials is None:
            channels.append(grpc.aio.insecure_channel(target, options=options, interceptors=interceptors))
        else:
            channels.append(grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors))
    calls = [
        health_pb2_grpc.HealthStub(channels[i % connections]).Watch(health_pb2.HealthCheckRequest()) for i in range(n)
    ]

    async def first(call: grpc.aio.UnaryStreamCall) -> str:
        try:
            reply = await asyncio.wait_for(call.read(), 20)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "open" if reply is not grpc.aio.EOF else "ended"

    outcomes = Counter(await asyncio.gather(*(first(c) for c in calls)))
    try:
        yield calls, outcomes
    finally:
        for c in calls:
            c.cancel()
        for ch in channels:
            await ch.close()


async def assert_generate_served(srv: Running) -> None:
    msgs = await collect(srv.stub.Generate(prompt_request(max_tokens=2), timeout=10))
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH


async def check(target: str, credentials: grpc.ChannelCredentials | None = None, **options: Any) -> int:
    opts = list(options.items())
    ch = (
        grpc.aio.insecure_channel(target) if credentials is None else grpc.aio.secure_channel(target, credentials, opts)
    )
    try:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)
    finally:
        await ch.close()


def loopback(address: str) -> str:
    """A client's target for an address the server reported (a wildcard bind answers on loopback)."""
    return address.replace("0.0.0.0:", "127.0.0.1:")


@asynccontextmanager
async def watch_target(listener: str, **health: Any) -> AsyncIterator[tuple[str, str | None]]:
    """A server with these ``[health]`` settings; yields where to Watch on ``listener`` and with which API key:
    "main", the main listener with alice's key; "health", the health listener (on a free port), no key."""
    if listener == "health":
        health["listen"] = "127.0.0.1:0"
    async with running_server([FakeEngine()], settings=make_settings(health=health)) as srv:
        key = srv.identity.keys["alice"] if listener == "main" else None
        target = srv.address if listener == "main" else srv.health_address
        assert target is not None
        yield target, key


async def test_watch_flood_on_the_main_listener_leaves_generate_served() -> None:
    """No health listener, caps set wide open: the main listener still holds at most MAIN_WATCH_CAP Watch
    streams, refuses the rest at once, and an authenticated Generate is served."""
    assert maximum_concurrent_rpcs(make_settings().server) == OLD_LIMIT
    settings = make_settings(health={"listen": "", **WIDE_OPEN})
    async with (
        running_server([FakeEngine()], settings=settings) as srv,
        watches(srv.address, FLOOD) as (_, outcomes),
    ):
        assert outcomes["open"] == MAIN_WATCH_CAP, outcomes
        assert outcomes["RESOURCE_EXHAUSTED"] == FLOOD - MAIN_WATCH_CAP, outcomes
        await assert_generate_served(srv)
        assert await srv.health_status() == SERVING  # Check stays public and cheap


async def test_watch_flood_on_both_listeners_leaves_generate_served() -> None:
    """With the health listener on, anonymous Watch on the main listener is refused (UNAUTHENTICATED: it
    needs a principal there); the health listener takes its own flood up to its own caps; Generate is
    served throughout, and both listeners still answer Check."""
    settings = make_settings(health={"listen": "127.0.0.1:0", "max_watch_streams": 300, "max_watch_per_peer": 4096})
    async with running_server([FakeEngine()], settings=settings) as srv:
        assert srv.health_address is not None
        async with (
            watches(srv.address, FLOOD) as (_, main),
            # The health listener carries few streams per connection: open enough connections for 300.
            watches(srv.health_address, FLOOD, connections=FLOOD // MAX_CONCURRENT_STREAMS + 1) as (_, side),
        ):
            # (Refusals in flight past the concurrent-RPC limit get grpc's own RESOURCE_EXHAUSTED.)
            assert main["UNAUTHENTICATED"] > 0 and set(main) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}, main
            assert side == Counter({"open": 300, "RESOURCE_EXHAUSTED": FLOOD - 300}), side
            await assert_generate_served(srv)
            assert await check(srv.health_address) == SERVING  # Check has headroom above the Watch cap
            assert await srv.health_status() == SERVING
            # A principal may still watch on the main listener, within the main listener's cap.
            async with watches(srv.address, 2, connections=1, key=srv.identity.keys["alice"]) as (_, authed):
                assert authed == Counter({"open": 2}), authed


@pytest.mark.parametrize("listener", ["main", "health"])
async def test_watch_per_peer_cap(listener: str) -> None:
    async with (
        watch_target(listener, max_watch_streams=20, max_watch_per_peer=3) as (target, key),
        watches(target, 3, connections=1, key=key) as (calls, first),
    ):
        assert first == Counter({"open": 3}), first
        async with watches(target, 2, connections=2, key=key) as (_, more):
            assert more == Counter({"RESOURCE_EXHAUSTED": 2}), more  # one peer, whatever the connection
        calls[0].cancel()
        await asyncio.sleep(0.2)
        async with watches(target, 1, connections=1, key=key) as (_, again):
            assert again == Counter({"open": 1}), again  # a closed stream frees its place


@pytest.mark.parametrize("listener", ["main", "health"])
async def test_watch_total_cap(listener: str) -> None:
    async with (
        watch_target(listener, max_watch_streams=5, max_watch_per_peer=4096) as (target, key),
        watches(target, 8, key=key) as (_, outcomes),
    ):
        assert outcomes == Counter({"open": 5, "RESOURCE_EXHAUSTED": 3}), outcomes


@pytest.mark.parametrize("listener", ["main", "health"])
async def test_watch_lifetime_ends_the_stream(listener: str) -> None:
    """After health.watch_lifetime_s the server ends a Watch with status OK; the client opens a new one."""
    async with watch_target(listener, watch_lifetime_s=0.5, max_watch_per_peer=1) as (target, key):
        async with watches(target, 1, connections=1, key=key) as ((call,), outcomes):
            assert outcomes == Counter({"open": 1})
            assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
        async with watches(target, 1, connections=1, key=key) as (_, again):
            assert again == Counter({"open": 1})  # its place (per peer: 1) was given back


async def test_health_listener_needs_no_client_certificate(tmp_path: Path) -> None:
    """A mutual-TLS server: the main listener refuses a connection without a client certificate; its
    health listener answers Check in plaintext on loopback, and over server-only TLS on a non-loopback
    address (here the wildcard, reached on 127.0.0.1)."""
    pki = make_pki(tmp_path)
    mtls = {"cert_file": pki["server_cert"], "key_file": pki["server_key"], "client_ca_file": pki["ca"]}
    server_tls = {"cert_file": pki["server_cert"], "key_file": pki["server_key"]}
    ca_only = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    for health, credentials in (
        ({"listen": "127.0.0.1:0"}, None),
        ({"listen": "0.0.0.0:0", "tls": server_tls}, ca_only),
    ):
        settings = make_settings(server={"tls": mtls}, health=health)
        async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
            assert srv.health_address is not None
            target = loopback(srv.health_address)
            for _ in range(100):
                if await check(target, credentials, **{"grpc.ssl_target_name_override": "localhost"}) == SERVING:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the health listener never said SERVING")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await check(srv.address, ca_only)  # the main listener: no client certificate, no handshake
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            if credentials is not None:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await check(target)  # plaintext to the TLS health listener
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_listener_serves_only_health() -> None:
    settings = make_settings(health={"listen": "127.0.0.1:0"})
    async with running_server([FakeEngine()], settings=settings) as srv:
        assert srv.health_address is not None
        ch = grpc.aio.insecure_channel(srv.health_address, interceptors=aio_bearer(srv.identity.keys["alice"]))
        try:
            inference = pb_grpc.InferenceStub(ch)
            admin = apb_grpc.AdminStub(ch)
            for call in (
                inference.ListModels(pb.ListModelsRequest(), timeout=5),
                inference.Tokenize(pb.TokenizeRequest(model="fake-model", prompt="hi"), timeout=5),
                collect(inference.Generate(prompt_request(max_tokens=2), timeout=5)),
                admin.ListTenants(apb.ListTenantsRequest(), timeout=5),
                health_pb2_grpc.HealthStub(ch).List(health_pb2.HealthListRequest(), timeout=5),  # as before
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await ch.close()


async def test_cli_health_asks_the_health_listener(tmp_path: Path) -> None:
    """`bastion health --health-listener` asks [health] listen, without credentials."""
    settings = make_settings(health={"listen": "127.0.0.1:0"})
    async with running_server([FakeEngine()], settings=settings) as srv:
        assert srv.health_address is not None
        cfg = tmp_path / "client.toml"
        cfg.write_text(f'[server]\nlisten = "{srv.address}"\n[health]\nlisten = "{srv.health_address}"\n')
        env = {"XDG_CONFIG_HOME": str(tmp_path / "none")}
        result = await run_cli("health", "--config", str(cfg), "--health-listener", env=env)
    assert result == (0, "SERVING\n", "")


async def test_client_health_channel_without_the_listener_is_a_config_error() -> None:
    from bastion.errors import ConfigError

    with pytest.raises(ConfigError, match="health.listen"):
        client.default_health_target(make_settings(health={"listen": ""}))
