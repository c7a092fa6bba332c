"""Mutual TLS on the listener, and the CLI client commands against a running server."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import grpc
import pytest
from certs import make_pki
from grpc_harness import make_settings, running_server

from bastion.cli import client
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from cli_util import run_cli
from fakes import FakeEngine


async def test_mutual_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    settings = make_settings(
        listen="127.0.0.1:0",
        server={"tls": {"cert_file": pki["server_cert"], "key_file": pki["server_key"], "client_ca_file": pki["ca"]}},
    )
    async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
        good = client.open_channel(
            srv.address,
            settings,
            ca_file=str(pki["ca"]),
            client_cert=str(pki["client_cert"]),
            client_key=str(pki["client_key"]),
            bearer=srv.identity.keys["alice"],
        )
        reply = await pb_grpc.InferenceStub(good).ListModels(pb.ListModelsRequest(), timeout=5)
        assert [m.name for m in reply.models] == ["fake-model"]
        await good.close()
        for channel in (
            client.open_channel(srv.address, settings, ca_file=str(pki["ca"])),  # TLS, no client cert
            grpc.aio.insecure_channel(srv.address),  # plaintext
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            await channel.close()


async def test_client_generate_streams_chat_and_picks_first_model() -> None:
    engine = FakeEngine()
    async with running_server([engine]) as srv:
        out = io.StringIO()
        await client.generate(
            srv.channel, prompt="hi", model=None, max_tokens=3, temperature=0.0, system="be brief", raw=False, out=out
        )
        assert out.getvalue() == "w0 w1 w2 \n"
        assert engine.requests[0].prompt_token_ids == tuple(b"<system>be brief<user>hi<assistant>")
        assert engine.requests[0].sampling.temperature == 0.0
        assert await client.health(srv.channel, 5) == "SERVING"


async def test_cli_commands_exit_codes(tmp_path: Path) -> None:
    async with running_server([FakeEngine()]) as srv:
        key = srv.identity.keys["alice"]
        key_file = tmp_path / "key"
        key_file.write_text(key + "\n")
        gen, health, anon = await asyncio.gather(
            run_cli("generate", "--target", srv.address, "--max-tokens", "2", "--raw", "hello", api_key=key),
            run_cli("health", "--target", srv.address),
            run_cli("generate", "--target", srv.address, "--max-tokens", "2", "hello"),
        )
        bad = await run_cli(
            "generate", "--target", srv.address, "--api-key-file", str(key_file), "--model", "nope", "x"
        )
    assert gen == (0, "w0 w1 \n", "")
    assert health == (0, "SERVING\n", "")
    assert anon[0] == 1 and "UNAUTHENTICATED: authentication required" in anon[2]
    assert bad[0] == 1 and "NOT_FOUND: model not found" in bad[2]
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text('[server]\nlisten = "0.0.0.0:1"\n')
    rc, out, err = await run_cli("serve", "--config", str(bad_cfg))
    assert rc == 2 and out == "" and err.count("\n") == 1 and "TLS is required" in err
    assert "Traceback" not in err
    rc, out, err = await run_cli("health", "--target", "127.0.0.1:1", "--timeout", "1")
    # Nothing listens there: reported as no answer (stderr), never as a status the server did not send.
    assert rc == 1 and out == "" and "error: no answer from 127.0.0.1:1 (UNAVAILABLE" in err
