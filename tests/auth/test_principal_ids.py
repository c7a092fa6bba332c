"""Principal ids are spelled in one place (bastion.auth.principal): their wire format, and parsing it back."""

from __future__ import annotations

import pytest

from bastion.auth.principal import (
    api_key_principal,
    api_key_principal_id,
    jwt_principal,
    jwt_principal_id,
    mtls_principal,
    parse_principal_id,
    spiffe_principal_id,
    x509_principal_id,
    x509_subject_principal,
)


def test_wire_format_of_each_kind() -> None:
    # These strings are what tenancy policies list: changing one locks every deployed principal out.
    assert api_key_principal_id("abcdefghijkl") == "apikey:abcdefghijkl"
    assert jwt_principal_id("https://idp.example", "user-42") == "jwt:https://idp.example#user-42"
    assert x509_principal_id("CN=svc,O=Example") == "x509:CN=svc,O=Example"
    assert spiffe_principal_id("prod.example", "/ns/chat") == "spiffe://prod.example/ns/chat"


def test_principals_use_the_same_spelling() -> None:
    assert api_key_principal("k1", "label").id == api_key_principal_id("k1")
    assert jwt_principal("https://idp.example", "alice", {}).id == jwt_principal_id("https://idp.example", "alice")
    assert x509_subject_principal("CN=a").id == x509_principal_id("CN=a")
    sid = spiffe_principal_id("prod.example", "/a")
    assert mtls_principal(sid).id == sid


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        ("apikey:abcdefghijkl", ("apikey", "abcdefghijkl")),
        ("jwt:https://idp.example#user#42", ("jwt", "https://idp.example#user#42")),
        ("x509:CN=svc", ("x509", "CN=svc")),
        ("spiffe://prod.example/ns/a", ("spiffe", "prod.example/ns/a")),
    ],
)
def test_parse_round_trips(pid: str, expected: tuple[str, str]) -> None:
    assert parse_principal_id(pid) == expected


@pytest.mark.parametrize("pid", ["", "apikey:", "api_key:abc", "APIKEY:abc", "jwt", "spiffe:/x", "tenant-a"])
def test_parse_refuses_unknown_or_empty(pid: str) -> None:
    with pytest.raises(ValueError, match="not a principal id"):
        parse_principal_id(pid)
