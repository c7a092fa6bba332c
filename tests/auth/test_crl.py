"""Client-certificate revocation (``auth.mtls.crl_file``): a revoked client certificate is refused whatever
credential its call carries, another one is accepted; the CRL must be signed by the client CA, current and
complete; it is reloaded when it changes. Red-team finding: revoking a client certificate had no effect
(gRPC's TLS has no CRL option), so a leaked certificate worked until it expired."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from certs import issue_client, make_pki, serial_of, write_crl
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.auth.api_keys import issue
from bastion.auth.authenticator import Authenticator
from bastion.auth.crl import RevocationList
from bastion.auth.settings import AuthSettings
from bastion.errors import ConfigError, Unauthenticated

SID = "spiffe://prod.example/ns/chat/sa/frontend"
OTHER = "spiffe://prod.example/ns/chat/sa/batch"


def ctx(cert_file: Path) -> dict[str, list[bytes]]:
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [cert_file.read_bytes()]}


@pytest.fixture()
def pki(tmp_path: Path) -> dict[str, Any]:
    p: dict[str, Any] = make_pki(tmp_path, client_uris=[SID])
    p["other"] = issue_client(p, "other", uris=[OTHER])["cert"]
    p["crl"] = write_crl(p, tmp_path / "crl.pem", [serial_of(p["client_cert"])])
    return p


def authenticator(pki: dict[str, Any], **auth: Any) -> Authenticator:
    settings = AuthSettings.model_validate(
        {"mtls": {"trust_domains": ["prod.example"], "crl_file": str(pki["crl"])}, **auth}
    )
    return Authenticator(settings, client_ca=True, client_ca_file=pki["ca"])


async def refusal(auth: Authenticator, metadata: Any, ac: Any) -> str:
    with pytest.raises(Unauthenticated) as ei:
        await auth.authenticate(metadata, ac)
    assert ei.value.public_message == "invalid credentials" and ei.value.detail is not None
    return ei.value.detail


async def test_a_revoked_certificate_is_refused_and_another_accepted(pki: dict[str, Any]) -> None:
    auth = authenticator(pki)
    assert await refusal(auth, [], ctx(pki["client_cert"])) == "revoked client certificate"
    assert (await auth.authenticate([], ctx(pki["other"]))).id == OTHER
    # Without the CRL setting the same certificate is accepted: the attack worked before.
    plain = Authenticator(AuthSettings.model_validate({"mtls": {"trust_domains": ["prod.example"]}}), client_ca=True)
    assert (await plain.authenticate([], ctx(pki["client_cert"]))).id == SID


async def test_a_bearer_credential_does_not_rescue_a_revoked_connection(pki: dict[str, Any], tmp_path: Path) -> None:
    store = tmp_path / "keys.json"
    _, key = issue(store, "ci")
    auth = authenticator(pki, api_keys={"file": str(store)})
    bearer = [("authorization", f"Bearer {key}")]
    assert await refusal(auth, bearer, ctx(pki["client_cert"])) == "revoked client certificate"
    assert (await auth.authenticate(bearer, ctx(pki["other"]))).method == "api_key"
    assert (await auth.authenticate(bearer, {})).method == "api_key"  # no client certificate: nothing to check


async def test_der_crl_and_a_certificate_of_an_issuer_without_crl(pki: dict[str, Any], tmp_path: Path) -> None:
    write_crl(pki, pki["crl"], [serial_of(pki["client_cert"])], der=True)
    auth = authenticator(pki)
    assert await refusal(auth, [], ctx(pki["client_cert"])) == "revoked client certificate"
    assert (await auth.authenticate([], ctx(pki["other"]))).id == OTHER
    (tmp_path / "x").mkdir()
    stranger = make_pki(tmp_path / "x", client_uris=[SID], ca_name="other-ca")  # no CRL speaks for this CA
    assert await refusal(auth, [], ctx(stranger["client_cert"])) == "no crl for the certificate's issuer"


def test_forged_expired_or_misconfigured_crls_refuse_the_start(pki: dict[str, Any], tmp_path: Path) -> None:
    forged = write_crl(pki, tmp_path / "forged.pem", [], signer=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ConfigError, match="not signed by a certificate of server.tls.client_ca_file"):
        RevocationList(forged, pki["ca"])
    expired = write_crl(pki, tmp_path / "old.pem", [], next_update=dt.timedelta(hours=-1))
    with pytest.raises(ConfigError, match="past its nextUpdate"):
        RevocationList(expired, pki["ca"])
    (tmp_path / "junk.pem").write_bytes(b"not a crl")
    with pytest.raises(ConfigError, match="not a PEM or DER"):
        RevocationList(tmp_path / "junk.pem", pki["ca"])
    with pytest.raises(ConfigError, match="cannot read"):
        RevocationList(tmp_path / "absent.pem", pki["ca"])
    settings = AuthSettings.model_validate({"mtls": {"crl_file": str(pki["crl"])}})
    with pytest.raises(ConfigError, match="needs server.tls.client_ca_file"):
        Authenticator(settings, client_ca=False)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _bump(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_the_crl_is_reloaded_when_it_changes_and_a_bad_one_keeps_the_previous(pki: dict[str, Any]) -> None:
    clock = Clock()
    now = [dt.datetime.now(dt.UTC)]
    crl = RevocationList(pki["crl"], pki["ca"], clock=clock, now=lambda: now[0])
    a = x509.load_pem_x509_certificate(pki["client_cert"].read_bytes())
    b = x509.load_pem_x509_certificate(pki["other"].read_bytes())
    with pytest.raises(Unauthenticated, match="revoked"):
        crl.check(a)
    crl.check(b)
    write_crl(pki, pki["crl"], [b.serial_number])  # a new CRL: b revoked, a no longer
    _bump(pki["crl"])
    with pytest.raises(Unauthenticated, match="revoked"):
        crl.check(a)  # within RELOAD_CHECK_S of the last look: still the old CRL
    clock.t += 2
    crl.check(a)
    with pytest.raises(Unauthenticated, match="revoked"):
        crl.check(b)
    assert crl.reloads == 1
    pki["crl"].write_bytes(b"half-written")
    clock.t += 2
    with pytest.raises(Unauthenticated, match="revoked"):
        crl.check(b)  # the unreadable change is ignored (logged): the previous CRL stays
    assert crl.reloads == 1
    now[0] += dt.timedelta(hours=2)  # the CRL's nextUpdate passes without a new one
    with pytest.raises(Unauthenticated, match="revocation list expired"):
        crl.check(a)
