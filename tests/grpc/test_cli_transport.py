"""Red team (issue 15, item 9) against live listeners: the CLI never sends a credential in clear to a target
that is not loopback or a unix socket, and ``bastion eval --expect-digest`` refuses a server that reports
another model digest before it sends a single probe."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path

from grpc_harness import running_server

from cli_util import run_cli
from fakes import FAKE_DIGEST, FakeEngine

KEY = "bst_" + "k" * 12 + "_" + "s" * 43


def _not_loopback_name() -> str:
    """This machine's host name: resolved by the resolver (here to this machine), so not a loopback target
    for the CLI, which trusts only loopback literals, ``localhost`` and unix sockets."""
    name = socket.gethostname()
    assert name and name != "localhost", "the test needs a host name other than localhost"
    try:
        ipaddress.ip_address(name)
        raise AssertionError("the test needs a host name, not an address")
    except ValueError:
        return name


async def test_cli_sends_no_credential_in_clear_to_a_non_loopback_target(tmp_path: Path) -> None:
    """Attack: a plaintext listener (a man in the middle) on a name that is not loopback. Before: ``generate``,
    ``eval`` and ``admin`` connected without TLS and sent the API key in the clear to whoever answered."""
    connections: list[bytes] = []

    async def mitm(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            connections.append(await asyncio.wait_for(reader.read(65536), 2))
        except TimeoutError:
            connections.append(b"")
        writer.close()

    listener = await asyncio.start_server(mitm, "0.0.0.0", 0)
    port = listener.sockets[0].getsockname()[1]
    target = f"{_not_loopback_name()}:{port}"
    try:
        for argv in (
            ["generate", "--target", target, "--model", "fake-model", "hello"],
            ["eval", "fake-model", "--target", target, "--profile", "ci", "--out", str(tmp_path / "out")],
            ["admin", "tenants", "--target", target],
            ["health", "--target", target],
        ):
            code, _, err = await run_cli(*argv, api_key=KEY, timeout=60)
            assert code == 2, (argv[0], code, err)
            assert "--ca-file" in err and KEY not in err, err
    finally:
        listener.close()
        await listener.wait_closed()
    assert connections == []  # refused before connecting: nothing, not even a TLS-less handshake, was sent
    assert not (tmp_path / "out").exists()


async def test_eval_refuses_a_server_reporting_another_digest_before_any_probe(tmp_path: Path) -> None:
    """Attack: a server (or whoever answers) that reports a model digest other than the one the operator means
    to attest. Before: ``eval`` took the reported digest, ran every probe against whatever answered, and signed
    the verdict for the digest it was told."""
    engine = FakeEngine(max_context=8192)  # the suite's jailbreak probes are long (one fake token per byte)
    async with running_server([engine]) as srv:
        key = srv.identity.keys["erin"]  # the evaluator
        other = "blake3:" + "cd" * 32
        out = tmp_path / "out"
        code, stdout, err = await run_cli(
            "eval",
            "fake-model",
            "--target",
            srv.address,
            "--profile",
            "ci",
            "--out",
            str(out),
            "--expect-digest",
            other,
            api_key=key,
        )
        assert code == 1, err
        assert "--expect-digest" in err and FAKE_DIGEST in err and other in err
        assert engine.requests == []  # not one probe
        assert not (out / "summary.json").exists() and stdout == ""

        # The digest it expects: the evaluation runs (the fake model's verdict does not matter here).
        code, stdout, err = await run_cli(
            "eval",
            "fake-model",
            "--target",
            srv.address,
            "--profile",
            "ci",
            "--out",
            str(out),
            "--expect-digest",
            FAKE_DIGEST.upper().replace("BLAKE3:", "blake3:"),
            api_key=key,
            timeout=300,
        )
        assert code in (0, 1) and (out / "summary.json").exists(), err
        assert engine.requests and "fake-model on bastion-ci@" in stdout


async def test_cli_calls_wait_the_delay_a_rate_limited_server_sends(tmp_path: Path) -> None:
    """The server sends its delay as RetryInfo and as ``grpc-retry-pushback-ms``; the CLI's channel retries an
    Inference call the server refused with a delay (gRPC's retry policy), instead of failing it or pausing a
    fixed time. Bob's tenant takes one request per 2 s: two ``generate`` calls at once both succeed, the
    second after the server's delay; the refusal between is audited."""
    import json

    from grpc_harness import make_settings

    from identity import make_identity

    ident = make_identity(tmp_path / "id", tenants={"tenant-b": {"requests_per_s": 0.5, "request_burst": 1}})
    settings = make_settings(identity=ident)
    async with running_server([FakeEngine()], settings=settings) as srv:
        argv = ("generate", "--target", srv.address, "--model", "fake-model", "--max-tokens", "1", "--raw", "hi")
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(run_cli(*argv, api_key=srv.identity.keys["bob"]) for _ in range(2)))
        took = asyncio.get_running_loop().time() - started
    assert [r[0] for r in results] == [0, 0], results
    assert took >= 1.0  # the second waited for the tenant's bucket (about 2 s), not a fixed pause
    recs = [json.loads(x) for p in sorted(srv.audit_dir.glob("audit-*.jsonl")) for x in p.read_text().splitlines()]
    assert sum(r.get("event") == "rate_limited" for r in recs) >= 1
    assert sum(r["kind"] == "request" and r.get("status") == "OK" for r in recs) == 2
