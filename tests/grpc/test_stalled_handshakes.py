"""Connections that never finish their TLS handshake cannot pile up on the gRPC listeners.

gRPC's core gives a server-side handshake 120 s by default and caps nothing: a client that opened TCP
connections to the mutual-TLS listener and never sent a ClientHello held every one of them (50 held for over
40 s, measured before the fix), each a file descriptor of the process that also writes the audit log. Now the
handshake has ``server.handshake_timeout_s`` and the listener holds at most ``server.max_connections``
connections, handshakes included (beyond: closed at once).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from certs import make_pki
from grpc_harness import make_settings, running_server

from bastion.config import HealthSettings, ServerSettings
from bastion.server.health_listener import health_server_options
from bastion.server.listener import server_options
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FakeEngine


def _mtls(tmp_path: Path) -> tuple[dict[str, str], dict[str, Path]]:
    pki = make_pki(tmp_path)
    return {
        "cert_file": str(pki["server_cert"]),
        "key_file": str(pki["server_key"]),
        "client_ca_file": str(pki["ca"]),
    }, pki


async def _tcp(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return False
    return True


async def _served(address: str, pki: dict[str, Path], key: str) -> int:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki["client_key"].read_bytes(),
        certificate_chain=pki["client_cert"].read_bytes(),
    )
    async with grpc.aio.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        reply = await pb_grpc.InferenceStub(ch).ListModels(
            pb.ListModelsRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10
        )
        return len(reply.models)


async def test_a_stalled_handshake_is_closed_at_the_deadline(tmp_path: Path) -> None:
    mtls, pki = _mtls(tmp_path)
    settings = make_settings(server={"tls": mtls, "handshake_timeout_s": 0.5})
    async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
        for stalled in (b"", b"\x16\x03\x01"):  # TCP only; the first bytes of a ClientHello, then nothing
            reader, writer = await _tcp(srv.address)
            writer.write(stalled)
            assert await _closed_within(reader, 5), "a stalled handshake was held past its deadline"
            writer.close()
        assert await _served(srv.address, pki, srv.identity.keys["alice"]) == 1


async def test_connections_beyond_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    mtls, pki = _mtls(tmp_path)
    settings = make_settings(server={"tls": mtls, "handshake_timeout_s": 30, "max_connections": 3})
    async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
        held = [await _tcp(srv.address) for _ in range(3)]
        reader, writer = await _tcp(srv.address)
        assert await _closed_within(reader, 5), "a connection beyond server.max_connections was held"
        writer.close()
        for _, w in held:
            w.close()
        await asyncio.sleep(0.5)
        assert await _served(srv.address, pki, srv.identity.keys["alice"]) == 1  # the places are free again


def test_both_grpc_listeners_bound_handshakes_and_connections() -> None:
    main = dict(server_options(ServerSettings(handshake_timeout_s=7, max_connections=99)))
    assert main["grpc.server_handshake_timeout_ms"] == 7000 and main["grpc.max_allowed_incoming_connections"] == 99
    health = dict(health_server_options(HealthSettings()))
    assert 0 < health["grpc.server_handshake_timeout_ms"] <= 10_000
    assert 0 < health["grpc.max_allowed_incoming_connections"] <= 1024
