"""Attacks on the HTTP API, each refused or cut off, and audited (issue 17): no credentials, a forged key, an
identity header and an identity field, an unknown route and ``/invocations`` (vLLM's prefix guard served
completions there without a key), an oversized body, a stalled body, slow headers, a stalled reader, a
flood of connections from one peer, a TLS handshake never finished; and the record of an admitted call names
the HTTP route."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from certs import make_pki
from http_harness import calls, chat_body, client, http_server, records

from fakes import FakeEngine

pytestmark = pytest.mark.asyncio


async def test_no_credentials_and_a_forged_key_are_refused_and_audited() -> None:
    async with http_server([FakeEngine()]) as srv:
        async with client(srv, None) as c:
            r = await c.post("/v1/chat/completions", json=chat_body())
            assert r.status_code == 401
            err = r.json()["error"]
            assert err["type"] == "authentication_error" and err["message"] == "authentication required"
        async with client(srv, None, headers={"authorization": "Bearer bst_forged_0000000000000000"}) as c:
            r = await c.post("/v1/chat/completions", json=chat_body())
            assert r.status_code == 401 and r.json()["error"]["message"] == "invalid credentials"
    # The second refusal of one key within the window is counted, and written when the server stops.
    recs = records(srv.audit_dir)
    assert calls(recs, event="authentication_failed", method="POST /v1/chat/completions") == 2


async def test_identity_headers_and_body_fields_are_refused_as_override_attempts() -> None:
    async with http_server([FakeEngine()]) as srv:
        async with client(srv, headers={"x-tenant": "tenant-b"}) as c:
            r = await c.post("/v1/chat/completions", json=chat_body())
            assert r.status_code == 403
        async with client(srv) as c:
            for field in ("cache_salt", "tenant"):
                r = await c.post("/v1/chat/completions", json=chat_body(**{field: "tenant-b"}))
                assert r.status_code == 403, field
                assert r.json()["error"]["message"] == "tenant, cache salt and identity come from credentials only"
        first = records(srv.audit_dir)[-1]
        assert first["event"] == "identity_override_attempt" and first["principal"] == srv.identity.principals["alice"]
    assert calls(records(srv.audit_dir), event="identity_override_attempt") == 3


@pytest.mark.parametrize("path", ["/invocations", "/v1/embeddings", "/v1/chat/completions/", "/metrics", "/"])
async def test_unknown_routes_need_a_credential_and_then_are_not_found(path: str) -> None:
    async with http_server([FakeEngine()]) as srv:
        async with client(srv, None) as c:
            r = await c.post(path, json={"model": "fake-model", "prompt": "hi"})
            assert r.status_code == 401  # nobody learns which routes exist without a credential
        async with client(srv) as c:
            r = await c.post(path, json={"model": "fake-model", "prompt": "hi"})
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
            r = await c.get("/v1/chat/completions")
            assert r.status_code == 405
        recs = records(srv.audit_dir)
        assert [(x["event"], x["method"], x["status"]) for x in recs] == [
            ("authentication_failed", f"POST {path}", "UNAUTHENTICATED"),
            ("refused", f"POST {path}", "NOT_FOUND"),
            ("refused", "GET /v1/chat/completions", "NOT_FOUND"),
        ]
        assert recs[1]["principal"] == srv.identity.principals["alice"] and recs[1]["tenant"] == "tenant-a"


async def test_an_oversized_body_is_refused_before_it_is_read_and_audited() -> None:
    async with http_server([FakeEngine()], http={"max_body_bytes": 4096}) as srv:
        async with client(srv) as c:
            r = await c.post("/v1/chat/completions", json=chat_body("x" * 5000))
            assert r.status_code == 413
            assert r.json()["error"]["message"] == "body: at most 4096 bytes"

            # Chunked, without a Content-Length: cut off once past the limit.
            async def chunks():  # type: ignore[no-untyped-def]
                yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
                for _ in range(10):
                    yield b"y" * 1000

            r = await c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413
        recs = records(srv.audit_dir)
        assert [(x["status"], x["method"]) for x in recs] == [
            ("INVALID_ARGUMENT", "POST /v1/chat/completions"),
            ("INVALID_ARGUMENT", "POST /v1/completions"),
        ]
        assert all(x["principal"] == srv.identity.principals["alice"] for x in recs)


async def _raw(srv, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:  # type: ignore[no-untyped-def]
    host, port = srv.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    return reader, writer


async def test_a_stalled_body_is_refused_with_408_and_audited() -> None:
    async with http_server([FakeEngine()], http={"body_timeout_s": 0.5}) as srv:
        key = srv.identity.keys["alice"]
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {key}\r\ncontent-length: 500\r\n\r\n" + '{"model": "fake'
        ).encode()
        reader, writer = await _raw(srv, head)
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert status.startswith(b"HTTP/1.1 408"), status
        assert records(srv.audit_dir)[-1]["status"] == "INVALID_ARGUMENT"


async def test_slow_headers_lose_their_connection_and_a_peer_cannot_hold_many() -> None:
    async with http_server([FakeEngine()], http={"header_timeout_s": 0.5, "max_connections_per_peer": 3}) as srv:
        reader, writer = await _raw(srv, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")  # never ends
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server, nothing answered
        writer.close()
        held = [await _raw(srv, b"") for _ in range(3)]
        reader, writer = await _raw(srv, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the fourth is closed at once
        for _, w in held:
            w.close()
        await asyncio.sleep(0.1)
        async with client(srv, None) as c:
            assert (await c.get("/health")).status_code == 200  # the peer's slots are free again


async def test_a_stalled_tls_handshake_loses_its_connection_within_the_head_deadline(tmp_path: Path) -> None:
    """A TLS client that connects and never finishes the handshake is cut off at ``http.header_timeout_s``, not
    after the TLS layer's own 60 s."""
    pki = make_pki(tmp_path)
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"])}
    async with http_server([FakeEngine()], http={"tls": tls, "header_timeout_s": 0.5}) as srv:
        loop = asyncio.get_running_loop()
        for stalled in (b"", b"\x16\x03\x01"):  # TCP only, no ClientHello; the first bytes of one, then nothing
            started = loop.time()
            reader, writer = await _raw(srv, stalled)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            assert loop.time() - started < 3
            writer.close()
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        async with httpx.AsyncClient(base_url=f"https://{srv.http_address}", verify=ctx, timeout=10) as c:
            assert (await c.get("/health")).status_code == 200


async def test_tls_handshakes_in_progress_count_against_the_peer_cap(tmp_path: Path) -> None:
    """A peer's connections are counted from accept, not from the end of their TLS handshake: one that opens
    connections and never sends a ClientHello holds at most ``http.max_connections_per_peer`` of them for the
    handshake deadline, and the next is closed at once (before, each waited out the deadline uncounted)."""
    pki = make_pki(tmp_path)
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"])}
    limits = {"tls": tls, "header_timeout_s": 30, "max_connections_per_peer": 3}
    async with http_server([FakeEngine()], http=limits) as srv:
        loop = asyncio.get_running_loop()
        held = [await _raw(srv, stalled) for stalled in (b"", b"", b"\x16\x03\x01")]  # handshakes never finished
        started = loop.time()
        reader, writer = await _raw(srv, b"")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the fourth is closed at once, not after 30 s
        assert loop.time() - started < 3
        writer.close()
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        async with httpx.AsyncClient(base_url=f"https://{srv.http_address}", verify=ctx, timeout=3) as c:
            with pytest.raises(httpx.TransportError):  # the peer holds its whole share
                await c.get("/health")
        for _, w in held:
            w.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=f"https://{srv.http_address}", verify=ctx, timeout=10) as c:
            assert (await c.get("/health")).status_code == 200  # its slots are free again


async def test_handshakes_in_progress_are_bounded_in_total_and_dropped_at_shutdown(tmp_path: Path) -> None:
    """At most ``http.max_connections`` hand-overs (TLS handshakes) run at once, whatever the peers; stopping the
    listener drops those still running instead of waiting out their deadline."""
    pki = make_pki(tmp_path)
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"])}
    limits = {"tls": tls, "header_timeout_s": 30, "max_connections": 2, "max_connections_per_peer": 10}
    loop = asyncio.get_running_loop()
    async with http_server([FakeEngine()], http=limits) as srv:
        held = [await _raw(srv, b"") for _ in range(2)]
        reader, writer = await _raw(srv, b"")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the third handshake is refused at once
        writer.close()
        stopping = loop.time()
    assert loop.time() - stopping < 10  # the two stalled handshakes did not hold the shutdown for 30 s
    for reader, writer in held:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # dropped by the shutdown
        writer.close()


async def _non_reader(srv, path: str, payload: dict) -> socket.socket:  # type: ignore[no-untyped-def]
    """Sends alice's POST of ``payload`` on a raw socket with a small receive buffer, and never reads."""
    key = srv.identity.keys["alice"]
    body = json.dumps(payload)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()
    host, port = srv.http_address.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, head)
    return sock


async def test_a_stalled_reader_is_cut_off_and_its_stream_audited() -> None:
    engine = FakeEngine(token_delay=0.001, max_context=8192)
    async with http_server([engine], server={"stream_write_timeout_s": 0.5}) as srv:
        sock = await _non_reader(srv, "/v1/chat/completions", chat_body("tell me a lot", max_tokens=4000, stream=True))
        # Never read: the socket buffers fill, the server's writes block, and the call is ended.
        deadline = asyncio.get_running_loop().time() + 20
        while not any(r.get("method") == "POST /v1/chat/completions" for r in records(srv.audit_dir)):
            assert asyncio.get_running_loop().time() < deadline, "the stalled stream was never ended"
            await asyncio.sleep(0.1)
        rec = records(srv.audit_dir)[-1]
        assert rec["status"] == "UNAVAILABLE" and 0 < rec["completion_tokens"] < 4000
        assert engine.aborted  # the engine request was aborted
        sock.close()


async def test_an_admitted_call_is_audited_under_its_route() -> None:
    async with http_server([FakeEngine()]) as srv, client(srv) as c:
        r = await c.post("/v1/chat/completions", json=chat_body(max_tokens=3), headers={"x-client-request-id": "c-1"})
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        assert r.json()["id"] == f"chatcmpl-{rid}"
        rec = records(srv.audit_dir)[-1]
        assert rec["method"] == "POST /v1/chat/completions" and rec["request_id"] == rid
        assert rec["status"] == "OK" and rec["tenant"] == "tenant-a" and rec["client_request_id"] == "c-1"
        assert rec["peer"].startswith("ipv4:127.0.0.1:")


async def test_health_is_public_and_says_nothing_else() -> None:
    async with http_server([FakeEngine()]) as srv, client(srv, None) as c:
        r = await c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "SERVING"}
        assert (await c.post("/health")).status_code == 405
        assert records(srv.audit_dir) == []


async def test_an_oversized_head_and_a_non_json_body_are_refused() -> None:
    async with http_server([FakeEngine()], http={"max_header_bytes": 2048}) as srv:
        reader, writer = await _raw(
            srv, b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-filler: " + b"a" * 4096 + b"\r\n\r\n"
        )
        reply = await asyncio.wait_for(reader.read(), 5)  # answered, then closed
        writer.close()
        assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
        async with client(srv) as c:
            r = await c.post("/v1/completions", content=b"model=fake-model", headers={"content-type": "text/plain"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "content-type"
            r = await c.post(
                "/v1/completions",
                content=b'{"model": "a", "model": "fake-model", "prompt": "x"}',
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 400 and r.json()["error"]["message"] == "body: duplicate JSON keys are not accepted"
    assert calls(records(srv.audit_dir), status="INVALID_ARGUMENT", method="POST /v1/completions") == 2


async def test_a_client_that_never_reads_its_whole_response_loses_the_connection() -> None:
    """A large non-streamed answer (echo with the prompt's log-probabilities) to a client that reads nothing:
    the last bytes wait at most server.stream_write_timeout_s, then the connection is closed."""
    engine = FakeEngine(max_context=200_000)
    async with http_server(
        [engine], server={"stream_write_timeout_s": 0.5}, limits={"max_prompt_logprobs_tokens": 200_000}
    ) as srv:
        ask = {"model": "fake-model", "prompt": "x" * 60_000, "max_tokens": 1, "echo": True, "logprobs": 1}
        async with client(srv) as c:  # a client that reads: the whole answer's size
            whole = len((await c.post("/v1/completions", json=ask)).content)
        sock = await _non_reader(srv, "/v1/completions", ask)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3)  # the answer (megabytes of log-probabilities) waits; the write timeout passes
        received, closed = 0, False
        deadline = loop.time() + 10
        while loop.time() < deadline:  # now read: what was buffered, then the end of the connection
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5)
            if not chunk:
                closed = True
                break
            received += len(chunk)
        sock.close()
        assert whole > 1_000_000 and closed and received < whole  # cut off before the whole answer
        assert records(srv.audit_dir)[-1]["status"] == "OK"  # the call itself completed and was recorded


async def test_an_unexpected_failure_in_the_http_layer_is_a_500_with_the_request_id_only(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import bastion.server.http.api as api

    def boom(resp):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(api, "models", boom)
    async with http_server([FakeEngine()]) as srv, client(srv) as c:
        r = await c.get("/v1/models")
    assert r.status_code == 500
    err = r.json()["error"]
    assert (
        err["message"] == f"internal error (request_id={r.headers['x-request-id']})" and err["type"] == "server_error"
    )
    assert "secret" not in r.text
