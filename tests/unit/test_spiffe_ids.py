"""SPIFFE ids as the SPIFFE-ID spec (2.1-2.3) allows them: no ``.``/``..`` or empty path segments, no
percent-encoding, lower-case scheme and trust domain, no port, user information, query or fragment."""

from __future__ import annotations

import pytest

from bastion.auth.mtls import MAX_SPIFFE_ID, parse_spiffe_id


@pytest.mark.parametrize(
    "sid",
    [
        # dot segments, anywhere in the path
        "spiffe://prod.example/.",
        "spiffe://prod.example/..",
        "spiffe://prod.example/./a",
        "spiffe://prod.example/../a",
        "spiffe://prod.example/a/.",
        "spiffe://prod.example/a/..",
        "spiffe://prod.example/a/./b",
        "spiffe://prod.example/ns/../admin",
        # empty segments and paths
        "spiffe://prod.example",
        "spiffe://prod.example/",
        "spiffe://prod.example//a",
        "spiffe://prod.example/a//b",
        "spiffe://prod.example/a/",
        # percent-encoding (never decoded: "%2e%2e" would otherwise be "..")
        "spiffe://prod.example/%2e%2e/admin",
        "spiffe://prod.example/a/%2E",
        "spiffe://prod.example/a%2Fb",
        "spiffe://prod%2eexample/a",
        # scheme and authority
        "SPIFFE://prod.example/a",
        "spiffe://Prod.Example/a",
        "spiffe://prod.example:443/a",
        "spiffe://user@prod.example/a",
        "spiffe:///a",
        # query, fragment, other characters
        "spiffe://prod.example/a?x=1",
        "spiffe://prod.example/a#frag",
        "spiffe://prod.example/a b",
        "spiffe://prod.example/é",
        "spiffe://prod.example/" + "a" * MAX_SPIFFE_ID,
    ],
)
def test_malformed_spiffe_ids_are_refused(sid: str) -> None:
    with pytest.raises(ValueError, match="malformed spiffe id"):
        parse_spiffe_id(sid)


@pytest.mark.parametrize(
    ("sid", "want"),
    [
        ("spiffe://prod.example/ns/chat/sa/frontend", ("prod.example", "/ns/chat/sa/frontend")),
        ("spiffe://prod.example/a.b/..c/d..", ("prod.example", "/a.b/..c/d..")),  # dots inside names are fine
        ("spiffe://td_1-x/A_b-C.9", ("td_1-x", "/A_b-C.9")),
    ],
)
def test_well_formed_spiffe_ids(sid: str, want: tuple[str, str]) -> None:
    assert parse_spiffe_id(sid) == want
