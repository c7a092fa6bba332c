"""JwtVerifier with real keys and real tokens: every refusal names its reason in ``detail`` and never the token."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from jwt_fixtures import (
    AUDIENCE,
    ISSUER,
    FakeClock,
    Signer,
    b64,
    ec_signer,
    ed_signer,
    make_claims,
    raw_token,
    rsa_signer,
    serve_jwks,
    write_jwks,
)

from bastion.auth.jwt_verify import JwtVerifier
from bastion.auth.settings import JwtSettings
from bastion.errors import Unauthenticated


def settings(**over: Any) -> JwtSettings:
    base: dict[str, Any] = {"issuer": ISSUER, "audiences": [AUDIENCE]}
    base.update(over)
    return JwtSettings(**base)


def verifier(path: Path, *signers: Signer, clock: FakeClock | None = None, **over: Any) -> JwtVerifier:
    write_jwks(path, *signers)
    return JwtVerifier(settings(jwks_file=path, **over), clock=clock or FakeClock())


def record_reads(v: JwtVerifier, log: list[int], delay_s: float = 0.0) -> None:
    """Wraps the verifier's JWKS read so each read appends the reading thread's id to ``log``."""
    real_read = v.jwks._read

    def read() -> bytes:
        log.append(threading.get_ident())
        time.sleep(delay_s)
        return real_read()

    v.jwks._read = read


def refused(v: JwtVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as ei:
        v.verify(token)
    exc = ei.value
    assert exc.public_message == "invalid credentials"
    for text in (str(exc), repr(exc), exc.detail or ""):
        assert token not in text
        assert all(part not in text for part in token.split(".") if len(part) > 8)
    assert exc.detail is not None
    return exc.detail


@pytest.mark.parametrize("make", [rsa_signer, ec_signer, ed_signer], ids=["RS256", "ES256", "EdDSA"])
def test_valid_tokens_of_each_algorithm_map_to_issuer_and_subject(tmp_path: Path, make: Any) -> None:
    signer = make()
    v = verifier(tmp_path / "jwks.json", signer)
    p = v.verify(signer.token(sub="alice@example", jti="j-1"))
    assert p.id == f"jwt:{ISSUER}#alice@example"
    assert (p.method, p.subject) == ("jwt", "alice@example")
    assert p.claims["iss"] == ISSUER and p.claims["aud"] == AUDIENCE and p.claims["jti"] == "j-1"
    assert "pad" not in p.claims and len({p, v.verify(signer.token(sub="alice@example"))}) == 1  # hashable
    with pytest.raises(TypeError):
        p.claims["sub"] = "root"


def test_any_configured_audience_is_accepted_and_a_list_aud_claim_too(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s, audiences=["other", AUDIENCE])
    assert v.verify(s.token(aud=AUDIENCE)).subject == "user-42"
    assert v.verify(s.token(aud=["x", "other"])).subject == "user-42"


def test_expired_token(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s)
    now = int(time.time())
    assert refused(v, s.token(iat=now - 600, exp=now - 31)) == "expired token"  # beyond the 30 s leeway
    assert v.verify(s.token(iat=now - 600, exp=now - 10)).subject == "user-42"  # within it


def test_not_yet_valid_tokens(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s, leeway_s=0)
    now = int(time.time())
    assert refused(v, s.token(nbf=now + 120)) == "token not yet valid"
    assert refused(v, s.token(iat=now + 120, exp=now + 600)) == "token not yet valid"


def test_wrong_issuer_and_wrong_audience(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s)
    assert refused(v, s.token(iss="https://evil.example")) == "wrong issuer"
    assert refused(v, s.token(aud="another-service")) == "wrong audience"
    assert refused(v, s.token(aud=["a", "b"])) == "wrong audience"


def test_required_claims(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s)
    assert refused(v, s.token(exp=None)) == "missing claim exp"
    assert refused(v, s.token(sub=None)) == "missing claim sub"
    assert refused(v, s.token(iat=None)) == "missing claim iat"
    assert refused(v, s.token(iss=None)) == "missing claim iss"
    assert refused(v, s.token(aud=None)) == "missing claim aud"
    assert refused(v, s.token(sub="bad\nsubject")) == "malformed sub claim"


def test_alg_none_is_refused(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s)
    claims = make_claims()
    unsigned = raw_token({"alg": "none", "typ": "JWT", "kid": s.kid}, claims)
    assert unsigned.endswith(".")
    assert refused(v, unsigned) == "disallowed algorithm"
    assert refused(v, raw_token({"alg": "None", "kid": s.kid}, claims, signature=b"x")) == "disallowed algorithm"


def test_hs256_signed_with_the_public_key_pem_is_refused(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s)
    forged = raw_token({"alg": "HS256", "typ": "JWT", "kid": s.kid}, make_claims(), sign_key=s.public_pem())
    assert refused(v, forged) == "disallowed algorithm"
    # The same forgery against a JWKS that also publishes a symmetric key under that kid: still refused,
    # the oct key is never usable (HS* is not an allowed algorithm).
    oct_key = {"kty": "oct", "kid": "sym", "k": b64(s.public_pem())}
    write_jwks(tmp_path / "j2.json", s, extra=[oct_key])
    v2 = JwtVerifier(settings(jwks_file=tmp_path / "j2.json"), clock=FakeClock())
    assert v2.verify(s.token()).subject == "user-42"
    forged2 = raw_token({"alg": "HS256", "kid": "sym"}, make_claims(), sign_key=s.public_pem())
    assert refused(v2, forged2) == "disallowed algorithm"
    assert [k.key_id for k in v2.jwks._fresh_keys() or ()] == [s.kid]


def test_algorithm_must_match_the_key_type(tmp_path: Path) -> None:
    rsa_key, ec_key = rsa_signer(), ec_signer()
    v = verifier(tmp_path / "j.json", rsa_key, ec_key)
    # An ES256 token naming the RSA key's kid: the key is bound to RS256, never used for ES256.
    confused = ec_key.token(headers={"kid": rsa_key.kid})
    assert refused(v, confused) == "algorithm does not match key"


def test_algorithms_setting_limits_what_is_accepted(tmp_path: Path) -> None:
    rsa_key, ed_key = rsa_signer(), ed_signer()
    v = verifier(tmp_path / "j.json", rsa_key, ed_key, algorithms=["EdDSA"])
    assert refused(v, rsa_key.token()) == "disallowed algorithm"
    assert v.verify(ed_key.token()).subject == "user-42"


def test_bad_signature(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s)
    impostor = rsa_signer(kid=s.kid)  # another key claiming the same kid
    assert refused(v, impostor.token()) == "bad signature"
    header, payload, sig = s.token().split(".")
    tampered_payload = b64(json.dumps(make_claims(sub="admin")).encode())
    assert refused(v, f"{header}.{tampered_payload}.{sig}") == "bad signature"
    assert refused(v, f"{header}.{payload}.") == "bad signature"


def test_malformed_and_oversized_tokens(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s, max_token_bytes=1024)
    assert refused(v, "not-a-jwt") == "malformed token"
    assert refused(v, "a.b.c") == "malformed token"
    assert refused(v, s.token() + ".extra") == "malformed token"
    assert refused(v, s.token(pad="x" * 1200)) == "oversized token"


def test_weak_rsa_key_is_refused(tmp_path: Path) -> None:
    from jwt.warnings import InsecureKeyLengthWarning

    weak = rsa_signer(bits=1024)
    v = verifier(tmp_path / "j.json", weak)
    with pytest.warns(InsecureKeyLengthWarning):
        token = weak.token()
    assert refused(v, token) == "unusable key"


@pytest.mark.parametrize("typ", ["id+jwt", "logout+jwt", "application/logout+jwt", "secevent+jwt", "JOSE", 7])
def test_tokens_typed_as_anything_but_an_access_token_are_refused(tmp_path: Path, typ: Any) -> None:
    """Red-team finding: the typ header was never read, so an ID token, a logout token or a security event
    token signed by the issuer for the audience was taken as an access token."""
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s)
    assert refused(v, s.token(headers={"typ": typ})) == "not an access token"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "JWT", "jwt", None])
def test_access_token_types_are_accepted_by_default(tmp_path: Path, typ: str | None) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s)
    assert v.verify(s.token(headers={"typ": typ})).subject == "user-42"  # None: no typ header at all


def test_token_types_and_require_typ_are_configurable(tmp_path: Path) -> None:
    s = rsa_signer()
    strict = verifier(tmp_path / "j.json", s, token_types=["at+jwt"], require_typ=True)
    assert strict.verify(s.token(headers={"typ": "at+jwt"})).subject == "user-42"
    assert refused(strict, s.token(headers={"typ": "JWT"})) == "not an access token"
    assert refused(strict, s.token(headers={"typ": None})) == "missing typ"


def test_security_event_and_logout_tokens_are_refused_whatever_their_typ(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s)
    events = {"http://schemas.openid.net/event/backchannel-logout": {}}
    assert refused(v, s.token(events=events)) == "not an access token"
    assert refused(v, s.token(events=events, headers={"typ": None})) == "not an access token"


def test_kid_required_when_the_jwks_has_several_keys(tmp_path: Path) -> None:
    a, b = rsa_signer("a"), ec_signer("b")
    v = verifier(tmp_path / "j.json", a, b)
    no_kid = Signer(a.alg, None, a.private)
    assert refused(v, no_kid.token()) == "missing kid"
    single = verifier(tmp_path / "one.json", a)
    assert single.verify(no_kid.token()).subject == "user-42"


def test_unknown_kid_is_refused_and_refetch_is_rate_limited(tmp_path: Path) -> None:
    clock = FakeClock()
    known = rsa_signer("known")
    v = verifier(tmp_path / "j.json", known, clock=clock, jwks_min_refresh_s=30)
    reads: list[int] = []
    record_reads(v, reads)
    assert v.verify(known.token()).subject == "user-42"
    assert len(reads) == 1
    stranger = ec_signer("stranger")
    for _ in range(5):  # a flood of unknown kids inside the window: no refetch
        assert refused(v, stranger.token()) == "unknown kid"
    assert len(reads) == 1
    clock.advance(31)
    assert refused(v, stranger.token()) == "unknown kid"  # one refetch, still unknown
    assert refused(v, stranger.token()) == "unknown kid"
    assert len(reads) == 2


def test_rotation_in_the_jwks_file(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.json"
    old, new, newer = rsa_signer("k1"), ec_signer("k2"), ed_signer("k3")
    v = verifier(path, old, clock=clock, jwks_min_refresh_s=30, jwks_cache_s=300)
    assert v.verify(old.token()).subject == "user-42"
    write_jwks(path, old, new)  # the issuer publishes k2
    clock.advance(30)
    assert v.verify(new.token()).subject == "user-42"  # unknown kid → refetch → accepted
    write_jwks(path, new, newer)  # k3 appears and k1 retires
    assert refused(v, newer.token()) == "unknown kid"  # the refetch just happened: rate limited
    assert v.verify(old.token()).subject == "user-42"  # the cached set still holds k1
    clock.advance(30)
    assert v.verify(newer.token()).subject == "user-42"
    assert refused(v, old.token()) == "unknown kid"  # k1 is gone from the refetched set


def test_cache_expiry_refetches_and_a_failed_fetch_fails_closed_after_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.json"
    s = rsa_signer()
    v = verifier(path, s, clock=clock, jwks_cache_s=60, jwks_min_refresh_s=10)
    assert v.verify(s.token()).subject == "user-42"
    path.write_text("{not json")
    clock.advance(61)  # expired: refetch fails, no keys to fall back on
    assert refused(v, s.token()) == "jwks unavailable"
    clock.advance(5)
    assert refused(v, s.token()) == "jwks unavailable"  # no refetch inside the rate limit
    write_jwks(path, s)
    clock.advance(10)
    assert v.verify(s.token()).subject == "user-42"


def test_missing_jwks_file_refuses(tmp_path: Path) -> None:
    s = rsa_signer()
    v = JwtVerifier(settings(jwks_file=tmp_path / "absent.json"), clock=FakeClock())
    assert refused(v, s.token()) == "jwks unavailable"


def test_private_keys_in_the_jwks_are_not_used(tmp_path: Path) -> None:
    s = rsa_signer()
    import jwt as pyjwt

    private_jwk = json.loads(pyjwt.get_algorithm_by_name("RS256").to_jwk(s.private))
    private_jwk["kid"] = s.kid
    (tmp_path / "j.json").write_text(json.dumps({"keys": [private_jwk]}))
    v = JwtVerifier(settings(jwks_file=tmp_path / "j.json"), clock=FakeClock())
    assert refused(v, s.token()) == "jwks unavailable"


async def test_jwks_from_a_loopback_http_url_with_rotation() -> None:
    clock = FakeClock()
    a, b = rsa_signer("a"), ed_signer("b")
    with serve_jwks() as srv:
        srv.publish(a)
        v = JwtVerifier(settings(jwks_url=srv.url, jwks_min_refresh_s=30), clock=clock)
        assert (await v.verify_async(a.token())).subject == "user-42"
        assert srv.requests == 1
        assert (await v.verify_async(a.token(sub="again"))).subject == "again"
        assert srv.requests == 1  # cached
        srv.publish(a, b)
        with pytest.raises(Unauthenticated) as ei:
            await v.verify_async(b.token())
        assert ei.value.detail == "unknown kid" and srv.requests == 1  # rate limited: no fetch yet
        clock.advance(30)
        assert (await v.verify_async(b.token())).subject == "user-42"
        assert srv.requests == 2


async def test_async_verify_fetches_off_the_event_loop_thread(tmp_path: Path) -> None:
    s = rsa_signer()
    v = verifier(tmp_path / "j.json", s)
    threads: list[int] = []
    record_reads(v, threads)
    assert (await v.verify_async(s.token())).subject == "user-42"
    assert threads and threads[0] != threading.get_ident()
    # Concurrent first calls share one fetch.
    v2 = verifier(tmp_path / "j2.json", s)
    count: list[int] = []
    record_reads(v2, count, delay_s=0.05)
    results = await asyncio.gather(*(v2.verify_async(s.token()) for _ in range(8)))
    assert {p.subject for p in results} == {"user-42"} and len(count) == 1


def test_redirects_from_the_jwks_url_are_not_followed() -> None:
    s = rsa_signer()
    with serve_jwks() as srv:
        v = JwtVerifier(settings(jwks_url=srv.url.replace("/jwks.json", "/moved")), clock=FakeClock())
        assert refused(v, s.token()) == "jwks unavailable"
        assert srv.requests == 1


async def test_verified_tokens_are_remembered_only_until_exp_or_the_cache_lifetime(tmp_path: Path) -> None:
    signer = ec_signer()
    v = verifier(tmp_path / "jwks.json", signer)
    now = time.time()
    token = signer.token(exp=int(now) + 30)
    first = await v.verify_async(token)
    calls: list[str] = []
    real = v._decode
    v._decode = lambda *a: calls.append("decode") or real(*a)
    assert await v.verify_async(token) == first and calls == []  # served from the cache
    v._wall = lambda: now + 31  # past exp: the cache no longer answers; the token is checked again
    await v.verify_async(token)  # (PyJWT's own clock decides; in real time it has not expired yet)
    assert calls == ["decode"]
    long_lived = signer.token(exp=int(now) + 3600)
    v._wall = lambda: now
    await v.verify_async(long_lived)
    v._wall = lambda: now + 61  # the cache lifetime (60 s) bounds even a long-lived token
    await v.verify_async(long_lived)
    assert calls == ["decode", "decode", "decode"]
