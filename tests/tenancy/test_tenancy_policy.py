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
        (b'[tenants.a]\nbogus = 1\n', "tenants.a.bogus"),
        (b'[[principals]]\nid="x"\ntenant="missing"\n', "principals[0].tenant"),
        (b'[[principals]]\nid="x"\ntenant="a"\nroles=["root"]\n[tenants.a]\n', "principals.0.roles.0"),
        (b'[tenants.a]\nmax_concurrent_streams = 0\n', "tenants.a.max_concurrent_streams"),
        (b'[tenants.a.content_logging]\nenabled = true\n', "retention_days"),
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
