"""Each authentication method through the real gRPC stack: an mTLS SPIFFE principal, a JWT principal,
refusals audited, and server certificate rotation picked up without a restart."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import issue_client, make_pki, serial_of, write_crl
from grpc_harness import collect, make_settings, prompt_request, running_server
from jwt_fixtures import AUDIENCE, ISSUER, ec_signer, write_jwks

from bastion.cli import client
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FakeEngine
from identity import make_identity

SPIFFE = "spiffe://prod.test/ns/chat/sa/frontend"


def records(audit_dir: Path) -> list[dict[str, Any]]:
    out = []
    for seg in sorted(audit_dir.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line]
    return [r for r in out if r["kind"] in ("request", "decision")]


def tls(pki: dict[str, Path], client_ca: bool = True) -> dict[str, Any]:
    t = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"])}
    if client_ca:
        t["client_ca_file"] = str(pki["ca"])
    return {"tls": t}


async def test_mtls_spiffe_principal_and_untrusted_trust_domain(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, client_uris=[SPIFFE])
    ident = make_identity(tmp_path / "id")
    ident.write_policy(extra_principals=[{"id": SPIFFE, "tenant": "tenant-b"}])
    for domains, want in ((["prod.test"], grpc.StatusCode.OK), (["other.test"], grpc.StatusCode.UNAUTHENTICATED)):
        settings = make_settings(identity=ident, server=tls(pki), extra={"auth": {"mtls": {"trust_domains": domains}}})
        async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
            ch = client.open_channel(
                srv.address,
                settings,
                ca_file=str(pki["ca"]),
                client_cert=str(pki["client_cert"]),
                client_key=str(pki["client_key"]),
            )
            try:
                await collect(pb_grpc.InferenceStub(ch).Generate(prompt_request(max_tokens=1), timeout=10))
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            await ch.close()
        assert code == want
        rec = records(srv.audit_dir)[-1]
        if want == grpc.StatusCode.OK:
            assert rec["principal"] == SPIFFE and rec["auth_method"] == "mtls" and rec["tenant"] == "tenant-b"
        else:
            assert rec["decision"] == "deny" and "trust domain" in rec["reason"]


async def test_jwt_principal_and_refused_tokens(tmp_path: Path) -> None:
    signer = ec_signer()
    jwks_file = write_jwks(tmp_path / "jwks.json", signer)
    ident = make_identity(tmp_path / "id")
    ident.write_policy(extra_principals=[{"id": f"jwt:{ISSUER}#user-42", "tenant": "tenant-a"}])
    settings = make_settings(
        identity=ident,
        extra={"auth": {"jwt": {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": str(jwks_file)}}},
    )
    other = ec_signer(kid="ec-1")  # same kid, different key: a forged signature
    async with running_server([FakeEngine()], settings=settings) as srv:
        cases = [
            (signer.token(), grpc.StatusCode.OK),
            (signer.token(exp=1_000_000_000, iat=999_999_000), grpc.StatusCode.UNAUTHENTICATED),
            (signer.token(aud="someone-else"), grpc.StatusCode.UNAUTHENTICATED),
            (other.token(), grpc.StatusCode.UNAUTHENTICATED),
            (signer.token(sub="user-7"), grpc.StatusCode.PERMISSION_DENIED),  # valid, not in the policy
        ]
        for token, want in cases:
            ch = grpc.aio.insecure_channel(srv.address, interceptors=client.bearer_interceptors(token))
            try:
                await pb_grpc.InferenceStub(ch).ListModels(pb.ListModelsRequest(), timeout=5)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            await ch.close()
            assert code == want
    recs = records(srv.audit_dir)  # after shutdown: the coalesced refusals are written too
    assert recs[0]["principal"] == f"jwt:{ISSUER}#user-42" and recs[0]["auth_method"] == "jwt"
    # The three tokens refused from one peer: the first in full, the other two as one counted record.
    assert [(r["decision"], r.get("count", 1)) for r in recs] == [("allow", 1), ("deny", 1), ("deny", 1), ("deny", 2)]
    assert recs[1]["event"] == "authentication_failed" and recs[2]["event"] == "authorization_denied"
    assert recs[3]["event"] == "authentication_failed" and recs[3]["reason"] == "coalesced"
    assert all(t not in json.dumps(recs) for t, _ in cases)


async def test_server_certificate_rotation_without_restart(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server.key"):
        shutil.copy(tmp_path / "old" / name, live / name)
    settings = make_settings(
        server={"tls": {"cert_file": str(live / "server.pem"), "key_file": str(live / "server.key")}}
    )
    async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
        key = srv.identity.keys["alice"]

        async def call(ca: Path) -> grpc.StatusCode:
            creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
            ch = grpc.aio.secure_channel(srv.address, creds, interceptors=client.bearer_interceptors(key))
            try:
                await pb_grpc.InferenceStub(ch).ListModels(pb.ListModelsRequest(), timeout=5)
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            finally:
                await ch.close()

        assert await call(old["ca"]) == grpc.StatusCode.OK
        # Rotate: write the new pair atomically (as cert-manager / a secret mount does).
        for name in ("server.key", "server.pem"):
            tmp = live / (name + ".tmp")
            shutil.copy(tmp_path / "new" / name, tmp)
            tmp.replace(live / name)
        await asyncio.sleep(1.2)  # the reloader checks at most once a second
        assert await call(new["ca"]) == grpc.StatusCode.OK
        assert await call(old["ca"]) == grpc.StatusCode.UNAVAILABLE  # the old certificate is gone


def test_mismatched_rotation_keeps_serving(tmp_path: Path) -> None:
    from bastion.config import TlsSettings
    from bastion.server.listener import _CertReloader

    a, b = make_pki(Path(tempfile.mkdtemp())), make_pki(Path(tempfile.mkdtemp()))
    cert, keyf = tmp_path / "c.pem", tmp_path / "k.pem"
    shutil.copy(a["server_cert"], cert)
    shutil.copy(a["server_key"], keyf)
    keyf.chmod(0o600)
    r = _CertReloader(TlsSettings(cert_file=cert, key_file=keyf))
    r.RELOAD_CHECK_S = 0.0
    assert r.fetch() is None  # nothing changed
    shutil.copy(b["server_cert"], cert)  # a half-done rotation: new certificate, old key
    assert r.fetch() is None and r.reloads == 0  # refused: the previous configuration stays
    shutil.copy(b["server_key"], keyf)
    assert r.fetch() is not None and r.reloads == 1


def test_bad_tls_pair_refused_at_start(tmp_path: Path) -> None:
    from bastion.config import TlsSettings
    from bastion.errors import ConfigError
    from bastion.server.listener import server_credentials

    a, b = make_pki(tmp_path), make_pki(Path(tempfile.mkdtemp()))
    a["server_key"].chmod(0o600)
    with pytest.raises(ConfigError, match="key_file does not match cert_file"):
        server_credentials(TlsSettings(cert_file=a["server_cert"], key_file=b["server_key"]))


async def test_client_certificate_from_an_untrusted_ca_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pki = make_pki(tmp_path / "a", client_uris=[SPIFFE])
    rogue = make_pki(tmp_path / "b", client_uris=[SPIFFE])  # same SPIFFE id, another CA
    engine = FakeEngine()
    ident = make_identity(tmp_path / "id")
    ident.write_policy(extra_principals=[{"id": SPIFFE, "tenant": "tenant-b"}])
    settings = make_settings(
        identity=ident, server=tls(pki), extra={"auth": {"mtls": {"trust_domains": ["prod.test"]}}}
    )
    async with running_server([engine], settings=settings, wait_ready=False) as srv:
        ch = client.open_channel(
            srv.address,
            settings,
            ca_file=str(pki["ca"]),
            client_cert=str(rogue["client_cert"]),
            client_key=str(rogue["client_key"]),
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(pb_grpc.InferenceStub(ch).Generate(prompt_request(max_tokens=1), timeout=10))
        await ch.close()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails: no call at all
    assert engine.requests == []


async def test_revoked_client_certificate_is_refused_and_audited(tmp_path: Path) -> None:
    """auth.mtls.crl_file over real mutual TLS: the revoked certificate's calls are UNAUTHENTICATED and audited
    as an authentication failure; another certificate of the same CA still works."""
    pki = make_pki(tmp_path, client_uris=[SPIFFE])
    other_id = "spiffe://prod.test/ns/chat/sa/batch"
    other = issue_client(pki, "other", uris=[other_id])
    crl = write_crl(pki, tmp_path / "crl.pem", [serial_of(pki["client_cert"])])
    ident = make_identity(tmp_path / "id")
    ident.write_policy(extra_principals=[{"id": p, "tenant": "tenant-b"} for p in (SPIFFE, other_id)])
    mtls = {"trust_domains": ["prod.test"], "crl_file": str(crl)}
    settings = make_settings(identity=ident, server=tls(pki), extra={"auth": {"mtls": mtls}})
    codes: dict[str, grpc.StatusCode] = {}
    async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
        for name, cert, key in (
            ("revoked", pki["client_cert"], pki["client_key"]),
            ("other", other["cert"], other["key"]),
        ):
            ch = client.open_channel(
                srv.address, settings, ca_file=str(pki["ca"]), client_cert=str(cert), client_key=str(key)
            )
            try:
                await pb_grpc.InferenceStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
                codes[name] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                codes[name] = exc.code()
            await ch.close()
    assert codes == {"revoked": grpc.StatusCode.UNAUTHENTICATED, "other": grpc.StatusCode.OK}
    denied, allowed = records(srv.audit_dir)
    assert (denied["decision"], denied["event"]) == ("deny", "authentication_failed")
    assert denied["reason"] == "revoked client certificate" and denied["status"] == "UNAUTHENTICATED"
    assert allowed["principal"] == other_id and allowed["auth_method"] == "mtls"
