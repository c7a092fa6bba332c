"""The ``[health]`` settings and the Watch caps of ``bastion.server.health`` (per peer, total, lifetime)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from bastion.config import load_settings
from bastion.errors import ConfigError
from bastion.server.health import SERVING, Health, HealthEndpoint, WatchLimits, peer_key
from bastion.server.listener import MAIN_WATCH_CAP, main_watch_limits


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("BASTION_") or key == "_BASTION_CONFIG_FILE":
            monkeypatch.delenv(key)


def test_health_defaults() -> None:
    h = load_settings().health
    assert h.listen == "127.0.0.1:50052"
    assert (h.max_watch_streams, h.max_watch_per_peer, h.watch_lifetime_s) == (64, 8, 300.0)
    assert not h.tls.enabled
    assert load_settings(overrides={"health": {"listen": ""}}).health.listen == ""  # "" disables it
    assert load_settings(overrides={"health": {"listen": "unix:/tmp/h.sock"}}).health.listen == "unix:/tmp/h.sock"


@pytest.mark.parametrize("listen", ["0.0.0.0:50052", "[::]:1", "10.0.0.1:8080"])
def test_health_listener_off_loopback_needs_tls(listen: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"health\.listen.*TLS"):
        load_settings(overrides={"health": {"listen": listen}})
    tls = {"cert_file": tmp_path / "c", "key_file": tmp_path / "k"}
    assert load_settings(overrides={"health": {"listen": listen, "tls": tls}}).health.tls.enabled


def test_health_listener_takes_no_client_ca(tmp_path: Path) -> None:
    tls = {"cert_file": tmp_path / "c", "key_file": tmp_path / "k", "client_ca_file": tmp_path / "ca"}
    with pytest.raises(ConfigError, match="client_ca_file"):
        load_settings(overrides={"health": {"tls": tls}})


def test_health_listener_cannot_share_the_main_address() -> None:
    with pytest.raises(ConfigError, match="health.listen"):
        load_settings(overrides={"server": {"listen": "127.0.0.1:7000"}, "health": {"listen": "127.0.0.1:7000"}})
    port0 = load_settings(overrides={"server": {"listen": "127.0.0.1:0"}, "health": {"listen": "127.0.0.1:0"}})
    assert port0.health.listen == "127.0.0.1:0"  # two free ports


@pytest.mark.parametrize(
    "field,value", [("max_watch_streams", 0), ("max_watch_per_peer", 0), ("watch_lifetime_s", 0), ("bogus", 1)]
)
def test_health_bounds(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"health.{field}"):
        load_settings(overrides={"health": {field: value}})


def test_main_listener_watch_limits_stay_below_the_margin() -> None:
    wide = load_settings(overrides={"health": {"max_watch_streams": 4096, "max_watch_per_peer": 4096}}).health
    limits = main_watch_limits(wide)
    assert limits.total == MAIN_WATCH_CAP and limits.per_peer == MAIN_WATCH_CAP
    small = main_watch_limits(load_settings(overrides={"health": {"max_watch_streams": 5}}).health)
    assert (small.total, small.per_peer, small.lifetime_s) == (5, 5, 300.0)


@pytest.mark.parametrize(
    "peer,key",
    [
        ("ipv4:127.0.0.1:51234", "ipv4:127.0.0.1"),
        ("ipv4:10.1.2.3:1", "ipv4:10.1.2.3"),
        ("ipv6:[::1]:51234", "ipv6:[::1]"),
        ("ipv6:[2001:db8::7]:443", "ipv6:[2001:db8::7]"),
        ("unix:/run/bastion.sock", "unix"),
        ("unix:", "unix"),
        ("unix-abstract:x", "unix"),
        ("", "?"),
        ("weird", "weird"),
    ],
)
def test_peer_key_drops_the_port(peer: str, key: str) -> None:
    assert peer_key(peer) == key


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.written: list[int] = []
        self.aborted: grpc.StatusCode | None = None

    def peer(self) -> str:
        return self._peer

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        self.written.append(message.status)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.aborted = code
        raise _Aborted(details)


async def _watch(endpoint: HealthEndpoint, peer: str) -> tuple[asyncio.Task[None], _Context]:
    ctx = _Context(peer)
    task = asyncio.ensure_future(endpoint.Watch(health_pb2.HealthCheckRequest(), ctx))
    await asyncio.sleep(0.01)
    return task, ctx


async def test_watch_caps_per_peer_and_total() -> None:
    health = Health()
    await health.set(SERVING)
    endpoint = health.endpoint(WatchLimits(total=3, per_peer=2, lifetime_s=60))
    a1, _ = await _watch(endpoint, "ipv4:10.0.0.1:1000")
    a2, _ = await _watch(endpoint, "ipv4:10.0.0.1:1001")
    a3, ctx3 = await _watch(endpoint, "ipv4:10.0.0.1:1002")  # a third from the same address
    assert ctx3.aborted == grpc.StatusCode.RESOURCE_EXHAUSTED and isinstance(a3.exception(), _Aborted)
    b1, ctx_b = await _watch(endpoint, "ipv6:[2001:db8::1]:5")
    assert ctx_b.written == [SERVING] and not b1.done()
    c1, ctx_c = await _watch(endpoint, "ipv4:10.0.0.2:7")  # another peer, but the total is reached
    assert ctx_c.aborted == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert endpoint.open_watches == 3
    a1.cancel()
    await asyncio.gather(a1, return_exceptions=True)
    c2, ctx_c2 = await _watch(endpoint, "ipv4:10.0.0.2:8")
    assert ctx_c2.aborted is None and ctx_c2.written == [SERVING]
    for t in (a2, b1, c2):
        t.cancel()
    await asyncio.gather(a2, b1, c2, c1, return_exceptions=True)
    assert endpoint.open_watches == 0


async def test_watch_lifetime_returns_and_frees_the_place() -> None:
    health = Health()
    await health.set(SERVING)
    endpoint = health.endpoint(WatchLimits(total=1, per_peer=1, lifetime_s=0.1))
    task, ctx = await _watch(endpoint, "unix:")
    await asyncio.wait_for(task, 2)  # returns normally: the call ends with status OK
    assert task.exception() is None and ctx.written == [SERVING]
    assert endpoint.open_watches == 0


async def test_watch_follows_the_shared_state_on_every_endpoint() -> None:
    health = Health()
    await health.set(SERVING)
    one = health.endpoint(WatchLimits(total=2, per_peer=2, lifetime_s=60))
    two = health.endpoint(WatchLimits(total=2, per_peer=2, lifetime_s=60))
    (t1, c1), (t2, c2) = await _watch(one, "unix:"), await _watch(two, "unix:")
    await health.shutting_down()
    await asyncio.sleep(0.01)
    assert c1.written == c2.written == [SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
    for t in (t1, t2):
        t.cancel()
    await asyncio.gather(t1, t2, return_exceptions=True)


def test_serve_health_listen_flag() -> None:
    from bastion.cli.main import _parser, _serve_overrides

    assert _serve_overrides(_parser().parse_args(["serve", "--health-listen", ""])) == {"health": {"listen": ""}}
    args = _parser().parse_args(["serve", "--health-listen", "unix:/run/h.sock"])
    assert _serve_overrides(args) == {"health": {"listen": "unix:/run/h.sock"}}
