"""Client certificates → principals: SPIFFE ids from allowed trust domains, the opt-in subject fallback,
refusals; and a real mutual-TLS gRPC call, so the auth_context shape read here is the one gRPC gives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import pytest
from certs import client_cert_pem, make_pki
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bastion.auth.authenticator import Authenticator
from bastion.auth.mtls import peer_certificate, principal_from_certificate
from bastion.auth.principal import Principal
from bastion.auth.settings import AuthSettings, MtlsAuthSettings
from bastion.errors import Unauthenticated

TRUSTED = MtlsAuthSettings(trust_domains=["prod.example", "dev.example"])
FALLBACK = MtlsAuthSettings(trust_domains=["prod.example"], allow_subject_fallback=True)


def ctx(pem: bytes) -> dict[str, list[bytes]]:
    """What grpc.aio's ServicerContext.auth_context() holds for a TLS call with a client certificate."""
    return {
        "transport_security_type": [b"ssl"],
        "x509_pem_cert": [pem],
        "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"],
    }


def principal(pem: bytes, settings: MtlsAuthSettings = TRUSTED) -> Principal:
    cert = peer_certificate(ctx(pem))
    assert cert is not None
    return principal_from_certificate(cert, settings)


def refused(pem: bytes, settings: MtlsAuthSettings = TRUSTED) -> str:
    with pytest.raises(Unauthenticated) as ei:
        principal(pem, settings)
    assert ei.value.public_message == "invalid credentials" and ei.value.detail is not None
    return ei.value.detail


def test_spiffe_id_from_an_allowed_trust_domain() -> None:
    sid = "spiffe://prod.example/ns/chat/sa/frontend"
    p = principal(client_cert_pem(uris=[sid], dns=["frontend.local"]))
    assert (p.id, p.method, p.subject) == (sid, "mtls", sid)


def test_spiffe_id_from_another_trust_domain_is_refused_even_with_fallback() -> None:
    pem = client_cert_pem(uris=["spiffe://evil.example/ns/chat/sa/frontend"])
    assert refused(pem) == "untrusted trust domain"
    assert refused(pem, FALLBACK) == "untrusted trust domain"
    assert refused(client_cert_pem(uris=["spiffe://prod.example/x"]), MtlsAuthSettings()) == "untrusted trust domain"


def test_certificate_without_spiffe_id_and_no_fallback_is_refused() -> None:
    assert refused(client_cert_pem(dns=["client.local"])) == "no spiffe id in client certificate"
    assert refused(client_cert_pem(uris=["https://client.example/id"])) == "no spiffe id in client certificate"


def test_subject_fallback_when_allowed() -> None:
    p = principal(client_cert_pem(cn="batch-job", org="Acme"), FALLBACK)
    assert (p.id, p.method, p.subject) == ("x509:CN=batch-job,O=Acme", "mtls", "CN=batch-job,O=Acme")


def test_more_than_one_spiffe_id_is_refused() -> None:
    pem = client_cert_pem(uris=["spiffe://prod.example/a", "spiffe://prod.example/b"])
    assert refused(pem) == "more than one spiffe id"


@pytest.mark.parametrize(
    "sid",
    [
        "spiffe://prod.example",
        "spiffe://prod.example/",
        "spiffe://Prod.Example/a",
        "spiffe://prod.example/a/../b",
        "spiffe://prod.example/a//b",
        "spiffe://prod.example/a?x=1",
        "spiffe://prod.example:443/a",
        "spiffe://user@prod.example/a",
        "SPIFFE://prod.example/a",
        "spiffe://prod.example/a#frag",
    ],
)
def test_malformed_spiffe_ids_are_refused(sid: str) -> None:
    assert refused(client_cert_pem(uris=[sid]), FALLBACK) == "malformed spiffe id"


def test_a_server_only_certificate_is_refused() -> None:
    pem = client_cert_pem(uris=["spiffe://prod.example/a"], usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert refused(pem) == "certificate not for client authentication"
    assert principal(client_cert_pem(uris=["spiffe://prod.example/a"], usages=None)).id == "spiffe://prod.example/a"


def test_no_certificate_without_tls_and_garbage_is_refused() -> None:
    pem = client_cert_pem(uris=["spiffe://prod.example/a"])
    assert peer_certificate({}) is None
    assert peer_certificate({"transport_security_type": [b"insecure"], "x509_pem_cert": [pem]}) is None
    assert peer_certificate({"transport_security_type": [b"ssl"]}) is None
    with pytest.raises(Unauthenticated, match="malformed client certificate"):
        peer_certificate(ctx(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
    with pytest.raises(Unauthenticated, match="more than one peer certificate"):
        peer_certificate({"transport_security_type": [b"ssl"], "x509_pem_cert": [pem, pem]})
    assert isinstance(peer_certificate(ctx(pem)), x509.Certificate)


async def test_real_mutual_tls_call_maps_the_client_spiffe_id(tmp_path: Path) -> None:
    sid = "spiffe://prod.example/ns/chat/sa/frontend"
    pki = make_pki(tmp_path, client_uris=[sid])
    auth = Authenticator(AuthSettings(mtls=TRUSTED), client_ca=True)
    seen: list[str] = []

    async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        ac: Mapping[str, Sequence[bytes]] = context.auth_context()
        p = await auth.authenticate(tuple(context.invocation_metadata() or ()), ac)
        seen.append(p.id)
        return p.id.encode()

    handler = grpc.method_handlers_generic_handler("test.Auth", {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [(pki["server_key"].read_bytes(), pki["server_cert"].read_bytes())],
        root_certificates=pki["ca"].read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        channel_creds = grpc.ssl_channel_credentials(
            pki["ca"].read_bytes(), pki["client_key"].read_bytes(), pki["client_cert"].read_bytes()
        )
        async with grpc.aio.secure_channel(f"localhost:{port}", channel_creds) as ch:
            reply = await ch.unary_unary("/test.Auth/WhoAmI")(b"", timeout=10)
        assert reply == sid.encode() and seen == [sid]
    finally:
        await server.stop(None)
