"""Authenticator: every call maps to one principal or is refused; metadata shape; no fallback after a bad
credential; refusals never carry the credential."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from certs import client_cert_pem
from jwt_fixtures import AUDIENCE, ISSUER, rsa_signer, write_jwks

from bastion.auth.api_keys import issue, revoke
from bastion.auth.authenticator import Authenticator
from bastion.auth.principal import Principal
from bastion.auth.settings import AuthSettings
from bastion.errors import ConfigError, Unauthenticated

SID = "spiffe://prod.example/ns/chat/sa/frontend"


@pytest.fixture()
def setup(tmp_path: Path) -> dict[str, Any]:
    signer = rsa_signer()
    jwks = write_jwks(tmp_path / "jwks.json", signer)
    store = tmp_path / "keys.json"
    key_id, key = issue(store, "ci")
    settings = AuthSettings.model_validate(
        {
            "mtls": {"trust_domains": ["prod.example"]},
            "jwt": {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": str(jwks)},
            "api_keys": {"file": str(store)},
        }
    )
    return {
        "auth": Authenticator(settings, client_ca=True),
        "signer": signer,
        "store": store,
        "key_id": key_id,
        "key": key,
        "cert": {"transport_security_type": [b"ssl"], "x509_pem_cert": [client_cert_pem(uris=[SID])]},
    }


def bearer(token: str) -> list[tuple[str, str]]:
    return [("user-agent", "test"), ("authorization", f"Bearer {token}")]


async def refused(auth: Authenticator, metadata: Any, ac: Any = None, *, secret: str = "") -> Unauthenticated:
    with pytest.raises(Unauthenticated) as ei:
        await auth.authenticate(metadata, ac or {})
    exc = ei.value
    assert exc.detail is not None
    if secret:
        for text in (str(exc), repr(exc), exc.public_message, exc.detail, repr(exc.args)):
            assert secret not in text
    return exc


async def test_no_credentials_is_refused(setup: dict[str, Any]) -> None:
    exc = await refused(setup["auth"], [("user-agent", "x")])
    assert (exc.public_message, exc.detail) == ("authentication required", "no credentials")
    # A client certificate is ignored where the listener has no client CA (it was never verified).
    no_ca = Authenticator(AuthSettings(), client_ca=False)
    exc = await refused(no_ca, [], setup["cert"])
    assert exc.detail == "no credentials"


async def test_each_method_maps_to_its_principal(setup: dict[str, Any]) -> None:
    auth: Authenticator = setup["auth"]
    p = await auth.authenticate(bearer(setup["key"]), {})
    assert (p.id, p.method) == (f"apikey:{setup['key_id']}", "api_key")
    p = await auth.authenticate(bearer(setup["signer"].token(sub="svc")), {})
    assert (p.id, p.method) == (f"jwt:{ISSUER}#svc", "jwt")
    p = await auth.authenticate([], setup["cert"])
    assert (p.id, p.method) == (SID, "mtls")


async def test_a_bearer_credential_wins_over_the_certificate_and_a_bad_one_never_falls_back(
    setup: dict[str, Any],
) -> None:
    auth: Authenticator = setup["auth"]
    p = await auth.authenticate(bearer(setup["key"]), setup["cert"])
    assert p.method == "api_key"
    revoke(setup["store"], setup["key_id"])
    exc = await refused(auth, bearer(setup["key"]), setup["cert"], secret=setup["key"])
    assert (exc.public_message, exc.detail) == ("invalid credentials", "revoked api key")


async def test_refusal_reasons_reach_detail_without_the_credential(setup: dict[str, Any]) -> None:
    auth: Authenticator = setup["auth"]
    s = setup["signer"]
    expired = s.token(exp=1, iat=0)
    assert (await refused(auth, bearer(expired), secret=expired)).detail == "expired token"
    wrong_aud = s.token(aud="x")
    assert (await refused(auth, bearer(wrong_aud), secret=wrong_aud)).detail == "wrong audience"
    unknown = "bst_aaaaaaaaaaaa_" + "B" * 43
    assert (await refused(auth, bearer(unknown), secret=unknown)).detail == "unknown api key"
    wrong_secret = f"bst_{setup['key_id']}_" + "C" * 43
    assert (await refused(auth, bearer(wrong_secret), secret="C" * 43)).detail == "wrong api key secret"
    untrusted = {
        "transport_security_type": [b"ssl"],
        "x509_pem_cert": [client_cert_pem(uris=["spiffe://other.example/a"])],
    }
    assert (await refused(auth, [], untrusted)).detail == "untrusted trust domain"


async def test_duplicate_authorization_metadata(setup: dict[str, Any]) -> None:
    md = [("authorization", f"Bearer {setup['key']}"), ("Authorization", f"Bearer {setup['key']}")]
    exc = await refused(setup["auth"], md, setup["cert"], secret=setup["key"])
    assert (exc.public_message, exc.detail) == ("invalid credentials", "duplicate authorization metadata")


async def test_oversized_authorization_metadata(setup: dict[str, Any]) -> None:
    big = "A" * 8193
    exc = await refused(setup["auth"], bearer(big), secret=big)
    assert exc.detail == "oversized authorization metadata"
    at_limit = "a.b." + "A" * (8192 - 4)  # exactly max_token_bytes: reaches the JWT checks
    assert (await refused(setup["auth"], bearer(at_limit))).detail == "malformed token"


@pytest.mark.parametrize(
    "value,detail",
    [
        ("Basic dXNlcjpwYXNz", "unsupported authorization scheme"),
        ("bst_aaaaaaaaaaaa_" + "A" * 43, "unsupported authorization scheme"),
        ("Bearer", "unsupported authorization scheme"),
        ("Bearer ", "malformed authorization metadata"),
        ("Bearer  token", "malformed authorization metadata"),
        ("Bearer a b", "malformed authorization metadata"),
        ("Bearer tok\u00e9n", "malformed authorization metadata"),
        ("Bearer tok\tx", "malformed authorization metadata"),
        (b"Bearer \xff\xfe", "malformed authorization metadata"),
        ("Bearer not-a-jwt", "malformed token"),
        ("Bearer bst_short", "malformed api key"),
    ],
)
async def test_malformed_authorization_metadata(setup: dict[str, Any], value: Any, detail: str) -> None:
    exc = await refused(setup["auth"], [("authorization", value)], setup["cert"])
    assert (exc.public_message, exc.detail) == ("invalid credentials", detail)


async def test_scheme_is_case_insensitive_and_bytes_values_work(setup: dict[str, Any]) -> None:
    p = await setup["auth"].authenticate([("authorization", f"bearer {setup['key']}".encode())], {})
    assert p.method == "api_key"


async def test_credentials_for_unconfigured_methods_are_refused(tmp_path: Path, setup: dict[str, Any]) -> None:
    only_keys = Authenticator(AuthSettings.model_validate({"api_keys": {"file": str(setup["store"])}}), client_ca=True)
    jwt_token = setup["signer"].token()
    assert (await refused(only_keys, bearer(jwt_token), secret=jwt_token)).detail == "jwt not configured"
    assert (await refused(only_keys, [], setup["cert"])).detail == "untrusted trust domain"  # no trust_domains
    only_jwt = Authenticator(
        AuthSettings.model_validate(
            {"jwt": {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": str(tmp_path / "jwks.json")}}
        ),
        client_ca=False,
    )
    assert (await refused(only_jwt, bearer(setup["key"]), secret=setup["key"])).detail == "api keys not configured"
    assert (await refused(only_jwt, [], setup["cert"])).detail == "no credentials"
    mtls_off = Authenticator(
        AuthSettings.model_validate(
            {"mtls": {"enabled": False, "trust_domains": ["prod.example"]}, "api_keys": {"file": str(setup["store"])}}
        ),
        client_ca=True,
    )
    assert (await refused(mtls_off, [], setup["cert"])).detail == "no credentials"


async def test_an_unexpected_error_fails_closed(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    auth: Authenticator = setup["auth"]

    def boom(presented: str) -> Principal:
        raise RuntimeError(f"leaky {presented}")

    assert auth.api_keys is not None
    monkeypatch.setattr(auth.api_keys, "authenticate", boom)
    exc = await refused(auth, bearer(setup["key"]), secret=setup["key"])
    assert (exc.public_message, exc.detail) == ("invalid credentials", "authentication error")
    assert exc.__cause__ is None and exc.__suppress_context__


def test_a_missing_api_key_store_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth.api_keys.file does not exist"):
        Authenticator(AuthSettings.model_validate({"api_keys": {"file": str(tmp_path / "none.json")}}), client_ca=False)
