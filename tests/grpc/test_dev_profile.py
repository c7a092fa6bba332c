"""`bastion serve --dev` (what `make run` uses): a local CA, mutual TLS, an API key and a tenancy policy
created once under the user's config directory, and client commands that use them by default."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import grpc
import httpx
from grpc_harness import running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion.cli import devprofile
from bastion.config import Settings, deep_merge
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from cli_util import run_cli
from fakes import FakeEngine


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_dev_profile_serves_mtls_and_clients_use_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    paths = devprofile.ensure_profile()
    d = devprofile.profile_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for private in ("server_key", "client_key", "api_key", "api_keys", "policy"):
        assert stat.S_IMODE(paths[private].stat().st_mode) == 0o600, private
    assert not list(d.glob("ca.key"))  # the CA key is not kept
    again = devprofile.ensure_profile()
    assert again["api_key"].read_text() == paths["api_key"].read_text()  # created once, then reused

    port = _port()
    overrides = devprofile.server_overrides(paths)
    assert overrides["health"]["listen"] == devprofile.HEALTH_LISTEN  # the health listener is on
    assert overrides["http"]["listen"] == devprofile.HTTP_LISTEN  # and the HTTP API, over TLS
    assert overrides["http"]["tls"]["cert_file"] == str(paths["server_cert"])
    settings = Settings.model_validate(
        deep_merge(
            overrides,
            {
                "server": {"listen": f"127.0.0.1:{port}"},
                "health": {"listen": "127.0.0.1:0"},  # a free port: tests must not collide on a fixed one
                "http": {"listen": "127.0.0.1:0"},
                "observability": {"metrics_listen": ""},
                "audit": {"dir": str(tmp_path / "audit")},
            },
        )
    )
    from grpc_harness import _IDENTITIES

    from identity import Identity

    ident = Identity(d, paths["policy"], paths["api_keys"], keys={"alice": paths["api_key"].read_text().strip()})
    _IDENTITIES[id(settings)] = ident
    async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
        env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
        devprofile.remember_listen(f"127.0.0.1:{port}")  # what `serve --dev` records before it binds
        cfg = tmp_path / "client.toml"
        cfg.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n')
        gen = await run_cli("generate", "--config", str(cfg), "--max-tokens", "2", "--raw", "hi", env=env)
        tenants = await run_cli("admin", "tenants", "--config", str(cfg), env=env)
        # The profile's files go with the target, however it is named: --target alone, or with an API key.
        by_target = await run_cli("health", "--target", f"127.0.0.1:{port}", env=env)
        keyed = await run_cli(
            "health",
            "--target",
            f"127.0.0.1:{port}",
            "--api-key-file",
            str(paths["api_key"]),
            "--service",
            "liveness",
            env=env,
        )
        # No answer is reported as no answer, never as a status.
        unreachable = await run_cli("health", "--target", f"127.0.0.1:{_port()}", "--timeout", "2", env=env)
        half = await run_cli("health", "--target", f"127.0.0.1:{port}", "--client-cert", str(paths["ca"]), env=env)
        # Plaintext, or TLS without the client certificate, does not get in.
        plain = grpc.aio.insecure_channel(srv.address)
        try:
            await pb_grpc.InferenceStub(plain).ListModels(pb.ListModelsRequest(), timeout=5)
            reached = True
        except grpc.aio.AioRpcError as exc:
            reached = exc.code() != grpc.StatusCode.UNAVAILABLE
        await plain.close()
        # Probes need no client certificate: the health listener answers in plaintext on loopback.
        assert srv.health_address is not None
        probe = grpc.aio.insecure_channel(srv.health_address)
        try:
            health = await health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=5)
        finally:
            await probe.close()
        # The HTTP API: HTTPS with the dev CA and the dev API key; plaintext does not get an answer.
        assert srv.http_address is not None
        bearer = {"authorization": f"Bearer {paths['api_key'].read_text().strip()}"}
        async with httpx.AsyncClient(verify=str(paths["ca"]), headers=bearer, timeout=10) as c:
            models = await c.get(f"https://{srv.http_address}/v1/models")
        async with httpx.AsyncClient(headers=bearer, timeout=10) as c:
            try:
                plain_http = (await c.get(f"http://{srv.http_address}/v1/models")).status_code
            except httpx.HTTPError:
                plain_http = None
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "fake-model"
    assert plain_http is None
    assert gen == (0, "w0 w1 \n", ""), gen
    assert by_target == (0, "SERVING\n", ""), by_target
    assert keyed == (0, "SERVING\n", ""), keyed
    assert unreachable[0] == 1 and unreachable[1] == "" and "error: no answer from" in unreachable[2], unreachable
    assert half[0] == 2 and "--client-cert and --client-key go together" in half[2], half
    assert tenants[0] == 0 and json.loads(tenants[1])["tenants"][0]["tenant"] == "dev"
    assert not reached
    assert health.status == health_pb2.HealthCheckResponse.SERVING
