"""The tenancy policy file: parsing, refusal of bad input (naming the field), principal lookup."""

from __future__ import annotations

import pytest

from bastion.errors import ConfigError
from bastion.tenancy.policy import TenancyPolicy

GOOD = b"""
[[principals]]
id = "spiffe://prod.example/ns/a"
tenant = "a"
roles = ["user", "admin"]

[[principals]]
id = "apikey:k1"
tenant = "b"

[tenants.a]
models = ["smollm2-*"]
max_tokens_per_request = 64

[tenants.b]
models = ["other"]
adapters = ["b-*"]
[tenants.b.content_logging]
enabled = true
retention_days = 7
"""


def test_parses_and_maps_principals() -> None:
    p = TenancyPolicy.parse(GOOD)
    a = p.assignment("spiffe://prod.example/ns/a")
    assert a is not None and a.tenant == "a" and a.roles == {"user", "admin"}
    assert a.limits.allows_model("smollm2-135m-instruct") and not a.limits.allows_model("other")
    b = p.assignment("apikey:k1")
    assert b is not None and b.roles == {"user"} and b.limits.allows_adapter("b-x")
    assert not a.limits.allows_adapter("b-x")  # no adapters unless listed
    assert p.assignment("apikey:unknown") is None
    assert p.digest.startswith("sha256:") and len(p.digest) == 71


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (b"[tenants.a]\nbogus = 1\n", "tenants.a.bogus"),
        (b'[[principals]]\nid="x"\ntenant="missing"\n', "principals[0].tenant"),
        (b'[[principals]]\nid="x"\ntenant="a"\nroles=["root"]\n[tenants.a]\n', "principals.0.roles.0"),
        (b"[tenants.a]\nmax_concurrent_streams = 0\n", "tenants.a.max_concurrent_streams"),
        (b"[tenants.a.content_logging]\nenabled = true\n", "retention_days"),
        (b'[tenants."a b"]\n', "tenant name"),
        (b'[[principals]]\nid="x"\ntenant="a"\n[[principals]]\nid="x"\ntenant="a"\n[tenants.a]\n', "listed twice"),
        (b"not toml [", "not valid TOML"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_policy_refused_naming_the_field(text: bytes, names: str) -> None:
    with pytest.raises(ConfigError) as err:
        TenancyPolicy.parse(text)
    assert names in err.value.public_message


def test_oversized_policy_refused() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        TenancyPolicy.parse(b"#" * (5 << 20))


def _prefix(text: str, digest: str) -> bytes:
    return GOOD + f'\n[[public_prefixes]]\nname = "sys"\ntext = "{text}"\nsha256 = "{digest}"\n'.encode()


def test_public_prefixes_are_pinned_by_sha256() -> None:
    import hashlib

    digest = hashlib.sha256(b"You are helpful.").hexdigest()
    p = TenancyPolicy.parse(_prefix("You are helpful.", digest))
    assert [x.name for x in p.public_prefixes] == ["sys"] and p.public_prefixes[0].text == "You are helpful."
    assert TenancyPolicy.parse(GOOD).public_prefixes == ()
    with pytest.raises(ConfigError, match=r"public_prefixes\.0: .*sha256 does not match"):
        TenancyPolicy.parse(_prefix("You are helpful!", digest))
    with pytest.raises(ConfigError, match=r"public_prefixes\.0\.sha256"):
        TenancyPolicy.parse(_prefix("x", "not-hex"))


def test_kv_reservation_cannot_exceed_the_cap() -> None:
    bad = GOOD.replace(b"max_tokens_per_request = 64", b"kv_reserved_blocks = 9\nkv_max_blocks = 8")
    with pytest.raises(ConfigError, match="tenants.a: .*kv_reserved_blocks must not exceed kv_max_blocks"):
        TenancyPolicy.parse(bad)


def test_prefix_cache_scope_defaults_to_the_tenant_and_is_validated() -> None:
    p = TenancyPolicy.parse(GOOD)
    assert p.tenants["a"].prefix_cache_scope == "tenant"  # the documented default
    scoped = TenancyPolicy.parse(GOOD.replace(b"max_tokens_per_request = 64", b'prefix_cache_scope = "principal"'))
    assert scoped.tenants["a"].prefix_cache_scope == "principal" and scoped.tenants["b"].prefix_cache_scope == "tenant"
    for bad in (b'"Principal"', b'"user"', b'""', b"true", b"1"):
        with pytest.raises(ConfigError) as err:
            TenancyPolicy.parse(GOOD.replace(b"max_tokens_per_request = 64", b"prefix_cache_scope = " + bad))
        assert "tenants.a.prefix_cache_scope" in err.value.public_message
