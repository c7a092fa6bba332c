"""Mutual TLS on the HTTP API (``http.tls.client_ca_file``): the TLS layer refuses a client without a
certificate the CA signed, the verified certificate is the principal where no bearer credential is sent
(``auth.mtls``, as on the gRPC API), a revoked one is refused and audited, and a bearer key over the same
connection still decides who calls."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from certs import issue_client, make_pki, serial_of, write_crl
from http_harness import calls, chat_body, http_server, records

from bastion.config import load_settings
from bastion.errors import ConfigError
from fakes import FakeEngine
from identity import make_identity

SPIFFE = "spiffe://prod.test/ns/chat/sa/frontend"
OTHER = "spiffe://prod.test/ns/chat/sa/batch"


def _pki(d: Path, **kw: Any) -> dict[str, Path]:
    d.mkdir()
    return make_pki(d, **kw)


def _client(url: str, pki: dict[str, Path], cert: tuple[Path, Path] | None, bearer: str | None = None) -> Any:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    return httpx.AsyncClient(base_url=url, verify=ctx, headers=headers, timeout=10)


async def _chat(url: str, pki: dict[str, Path], cert: tuple[Path, Path] | None, bearer: str | None = None) -> Any:
    async with _client(url, pki, cert, bearer) as c:
        return await c.post("/v1/chat/completions", json=chat_body(max_tokens=2))


async def test_client_certificates_on_the_http_api(tmp_path: Path) -> None:
    pki = _pki(tmp_path / "pki", client_uris=[SPIFFE])
    other = issue_client(pki, "other", uris=[OTHER])
    stranger = _pki(tmp_path / "stranger", client_uris=[SPIFFE], ca_name="stranger-ca")  # same id, other CA
    crl = write_crl(pki, tmp_path / "crl.pem", [serial_of(other["cert"])])
    ident = make_identity(tmp_path / "id")
    ident.write_policy(extra_principals=[{"id": p, "tenant": "tenant-b"} for p in (SPIFFE, OTHER)])
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]), "client_ca_file": str(pki["ca"])}
    mtls = {"trust_domains": ["prod.test"], "crl_file": str(crl)}
    async with http_server([FakeEngine()], http={"tls": tls}, identity=ident, extra={"auth": {"mtls": mtls}}) as srv:
        assert srv.http_address is not None
        url = f"https://{srv.http_address}"
        mine = (pki["client_cert"], pki["client_key"])
        ok = await _chat(url, pki, mine)
        assert ok.status_code == 200, ok.text
        # A bearer key on a mutual TLS connection is the credential (no fallback to the certificate).
        keyed = await _chat(url, pki, mine, bearer=srv.identity.keys["alice"])
        assert keyed.status_code == 200
        revoked = await _chat(url, pki, (other["cert"], other["key"]))
        assert revoked.status_code == 401 and revoked.json()["error"]["message"] == "invalid credentials"
        forged = await _chat(url, pki, mine, bearer="bst_forged")
        assert forged.status_code == 401
        # No certificate, or one another CA signed (with the same SPIFFE id): the handshake fails, no call.
        for cert in (None, (stranger["client_cert"], stranger["client_key"])):
            with pytest.raises(httpx.TransportError):
                await _chat(url, pki, cert)
    recs = records(srv.audit_dir)
    served = [r for r in recs if r.get("status") == "OK"]
    assert [(r["principal"], r["auth_method"], r["tenant"]) for r in served] == [
        (SPIFFE, "mtls", "tenant-b"),
        (srv.identity.principals["alice"], "api_key", "tenant-a"),
    ]
    assert all(r["method"] == "POST /v1/chat/completions" for r in served)
    # The revoked certificate's refusal is recorded in full; the forged key's, from the same peer within
    # audit.refusal_window_s, is coalesced into a count.
    assert calls(recs, reason="revoked client certificate", event="authentication_failed") == 1
    assert calls(recs, decision="deny", status="UNAUTHENTICATED") == 2
    assert len(recs) == 4  # the refused handshakes are no calls


def test_http_client_ca_must_be_the_grpc_listeners(tmp_path: Path) -> None:
    a, b = (_pki(tmp_path / n, ca_name=n) for n in ("a", "b"))
    cfg = tmp_path / "bastion.toml"
    cfg.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
[server.tls]
cert_file = "{a["server_cert"]}"
key_file = "{a["server_key"]}"
client_ca_file = "{a["ca"]}"
[http]
listen = "127.0.0.1:0"
[http.tls]
cert_file = "{a["server_cert"]}"
key_file = "{a["server_key"]}"
client_ca_file = "{b["ca"]}"
"""
    )
    with pytest.raises(ConfigError, match=r"http\.tls\.client_ca_file must be the same file as server\.tls"):
        load_settings(cfg)
