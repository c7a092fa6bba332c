"""The ``liveness`` and ``readiness`` health services for orchestrators' probes (issue 18, item 1), on the
health listener, which asks no client certificate (a kubelet's gRPC probe presents none) even where the main
listener requires one.

Liveness must not fail while the engine starts (minutes on CPU), and must fail once only a restart helps (an
engine died); readiness follows whether calls can be served."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from certs import make_pki
from grpc_harness import make_settings, mtls_with_tls_health, running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion.config import load_settings
from bastion.errors import ConfigError
from fakes import FakeEngine

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_liveness_holds_through_the_engine_start_and_fails_once_an_engine_died() -> None:
    engine = FakeEngine(ready=False)
    settings = make_settings(health={"listen": "127.0.0.1:0"})
    async with running_server([engine], settings=settings, wait_ready=False) as srv:
        # Starting: alive, not ready.
        assert await srv.health_status("liveness") == SERVING
        assert await srv.health_status("readiness") == NOT_SERVING
        engine.set_ready()
        await srv.wait_health(SERVING, service="readiness")
        assert await srv.health_status("liveness") == SERVING
        assert await srv.health_status("") == SERVING  # the overall status is readiness
        engine.die()
        await srv.wait_health(NOT_SERVING, service="liveness")
        assert await srv.health_status("readiness") == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await srv.health_status("bastion.v1.Admin")  # no such service name
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_probes_need_no_client_certificate_where_the_main_listener_requires_one(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    settings = mtls_with_tls_health(pki)
    async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
        assert srv.health_address is not None
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())  # no client certificate
        async with grpc.aio.secure_channel(srv.health_address, creds) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for service in ("liveness", "readiness"):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == SERVING, service


def test_plaintext_probes_off_loopback_are_an_explicit_choice(tmp_path: Path) -> None:
    cfg = tmp_path / "bastion.toml"
    cfg.write_text('[health]\nlisten = "0.0.0.0:50052"\n')
    with pytest.raises(ConfigError, match=r"health\.plaintext_off_loopback"):
        load_settings(cfg)
    cfg.write_text('[health]\nlisten = "0.0.0.0:50052"\nplaintext_off_loopback = true\n')
    assert load_settings(cfg).health.plaintext_off_loopback
