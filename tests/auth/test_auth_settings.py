"""[auth] settings: secure defaults, bounds, and the JWKS URL rule (https, http only for loopback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jwt_fixtures import AUDIENCE, ISSUER, FakeClock
from pydantic import ValidationError

from bastion.auth.jwt_verify import JwtVerifier
from bastion.auth.settings import AuthSettings, JwtSettings, MtlsAuthSettings
from bastion.errors import ConfigError


def jwt_settings(**over: Any) -> JwtSettings:
    return JwtSettings(**{"issuer": ISSUER, "audiences": [AUDIENCE], **over})


def test_defaults() -> None:
    a = AuthSettings()
    assert a.public_health is True
    assert (a.mtls.enabled, a.mtls.trust_domains, a.mtls.allow_subject_fallback) == (True, [], False)
    assert a.jwt.enabled is False and a.api_keys.file is None
    j = a.jwt
    assert j.algorithms == ["RS256", "ES256", "EdDSA"] and j.required_claims == ["exp", "iat", "sub"]
    assert (j.jwks_cache_s, j.jwks_min_refresh_s, j.leeway_s, j.max_token_bytes) == (300.0, 30.0, 30, 8192)
    assert (j.token_types, j.require_typ) == (["at+jwt", "JWT"], False)
    assert a.mtls.crl_file is None
    with pytest.raises(ValidationError):
        a.public_health = False


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example/jwks",
        "http://10.0.0.1/jwks",
        "http://127.0.0.2.nip.io/jwks",
        "http://localhost.evil.example/jwks",
        "http://127.0.0.1@evil.example/jwks",
        "ftp://idp.example/jwks",
        "file:///etc/jwks.json",
        "https://user:pw@idp.example/jwks",
        "https:///jwks",
        "jwks.json",
    ],
)
def test_jwks_url_must_be_https_or_loopback_http(url: str) -> None:
    with pytest.raises(ValidationError, match="jwks_url"):
        jwt_settings(jwks_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks",
        "http://localhost/jwks",
        "http://[::1]:9000/jwks",
        "http://127.0.0.2:8080/jwks",
    ],
)
def test_jwks_url_accepted(url: str) -> None:
    assert jwt_settings(jwks_url=url).jwks_url == url


def test_http_jwks_url_is_refused_by_the_verifier_too() -> None:
    """Even a settings object built without validation cannot make the verifier fetch over plain http."""
    s = JwtSettings.model_construct(
        **{**jwt_settings(jwks_url="https://idp.example/j").__dict__, "jwks_url": "http://idp.example/jwks"}
    )
    with pytest.raises(ConfigError, match="must be https"):
        JwtVerifier(s, clock=FakeClock())


@pytest.mark.parametrize(
    "over,match",
    [
        ({"audiences": []}, "audiences"),
        ({}, "exactly one of jwks_file and jwks_url"),
        ({"jwks_file": "/j.json", "jwks_url": "https://idp.example/j"}, "exactly one"),
        ({"jwks_file": "/j.json", "required_claims": ["iat", "sub"]}, "must include exp and sub"),
        ({"jwks_file": "/j.json", "leeway_s": 301}, "leeway_s"),
        ({"jwks_file": "/j.json", "leeway_s": -1}, "leeway_s"),
        ({"jwks_file": "/j.json", "max_token_bytes": 100_000}, "max_token_bytes"),
        ({"jwks_file": "/j.json", "algorithms": ["HS256"]}, "algorithms"),
        ({"jwks_file": "/j.json", "algorithms": ["none"]}, "algorithms"),
        ({"jwks_file": "/j.json", "algorithms": []}, "algorithms"),
        ({"jwks_file": "/j.json", "jwks_min_refresh_s": 600, "jwks_cache_s": 60}, "jwks_min_refresh_s"),
        ({"jwks_file": "/j.json", "surprise": 1}, "surprise"),
    ],
)
def test_jwt_settings_are_checked(over: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        JwtSettings(**{"issuer": ISSUER, "audiences": [AUDIENCE], **over})


def test_jwt_parts_without_an_issuer_are_refused() -> None:
    with pytest.raises(ValidationError, match="need auth.jwt.issuer"):
        JwtSettings(jwks_file=Path("/j.json"))


@pytest.mark.parametrize("td", ["Prod.Example", "spiffe://prod.example", "prod example", "", "a" * 256])
def test_trust_domains_are_checked(td: str) -> None:
    with pytest.raises(ValidationError, match="trust_domains"):
        MtlsAuthSettings(trust_domains=[td])


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError):
        AuthSettings.model_validate({"mtls": {"trust_domain": ["x"]}})
    with pytest.raises(ValidationError):
        AuthSettings.model_validate({"anonymous": True})


@pytest.mark.parametrize("types", [[], ["at jwt"], ["a" * 65], ["at+jwt", ""], ["x/y/z"]])
def test_jwt_token_types_are_bounded(types: list[str]) -> None:
    with pytest.raises(ValidationError, match="token_types"):
        jwt_settings(token_types=types)
