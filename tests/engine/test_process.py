"""The engine-process contract: one typed variable, paths and names only, refused when malformed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.engine.process import ENV_VAR, EngineProcessEnv, SealedLoad, current
from bastion.errors import ConfigError
from bastion.keys import FileKeyProvider

DIGEST, HEADER, SUBJECT = "blake3:" + "a" * 64, "blake3:" + "b" * 64, "sha256:" + "c" * 64
SEALED = {
    "trust_policy": "/p",
    "served_model": "m",
    "key_provider": {"BASTION_KEK_FILE": "/k"},
    "model_dir": "/m",
    "digest": DIGEST,
    "header_digest": HEADER,
    "subject_digest": SUBJECT,
}


def test_round_trips_through_one_variable(tmp_path: Path) -> None:
    kek = tmp_path / "kek"
    kek.write_bytes(b"k" * 32)
    sealed = SealedLoad(
        trust_policy=tmp_path / "policy.toml",
        served_model="m",
        key_provider=FileKeyProvider(kek).worker_env(),
        model_dir=tmp_path / "m.sealed",
        digest=DIGEST,
        header_digest=HEADER,
        subject_digest=SUBJECT,
    )
    contract = EngineProcessEnv(partition_key_file=tmp_path / "p.key", stats_dir=tmp_path / "kv", sealed=sealed)
    env = contract.to_env()
    assert list(env) == [ENV_VAR]
    assert EngineProcessEnv.from_env(env) == contract
    assert contract.isolation
    # references only: the key file's path is in the contract, its bytes are not
    assert str(kek.resolve()) in env[ENV_VAR] and "kkkk" not in env[ENV_VAR]


def test_absent_means_everything_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    contract = current()
    assert contract == EngineProcessEnv() and not contract.isolation and contract.sealed is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("{not json", "(root)"),
        (json.dumps({"partition_key_file": 7}), "partition_key_file"),
        (json.dumps({"tenant_secret": "x"}), "tenant_secret"),
        (json.dumps({"sealed": {**SEALED, "key_provider": {"KEK": "x"}}}), "sealed"),
        # the worker is bound to what the server attested: a contract without those digests is refused
        (json.dumps({"sealed": {k: v for k, v in SEALED.items() if k != "header_digest"}}), "header_digest"),
        (json.dumps({"sealed": {k: v for k, v in SEALED.items() if k != "subject_digest"}}), "subject_digest"),
        (json.dumps({"sealed": {**SEALED, "digest": "sha256:" + "a" * 64}}), "digest"),
    ],
)
def test_a_malformed_contract_is_refused_naming_the_field(raw: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        EngineProcessEnv.from_env({ENV_VAR: raw})
    assert "Traceback" not in str(info.value)


def test_the_sealed_part_round_trips_with_an_unsigned_subject() -> None:
    contract = EngineProcessEnv.from_env({ENV_VAR: json.dumps({"sealed": {**SEALED, "subject_digest": ""}})})
    assert contract.sealed is not None and contract.sealed.subject_digest == ""
    assert contract.sealed.model_dir == Path("/m") and contract.sealed.header_digest == HEADER


def test_an_unknown_version_is_refused() -> None:
    with pytest.raises(ConfigError, match="version 2"):
        EngineProcessEnv.from_env({ENV_VAR: json.dumps({"version": 2})})
