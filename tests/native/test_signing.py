"""OMS signatures over sealed and plain model directories: interop with stock `model-signing` both ways,
the trust policy, and the tamper corpus for everything the signature covers."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.errors import BastionError, IntegrityError
from bastion.weights import SealedReader, seal_dir
from bastion.weights.policy import TrustPolicy
from bastion.weights.signing import check_files, create_signing_key, sign_dir, verify_signature

MODEL_SIGNING = str(Path(sys.executable).with_name("model_signing"))


def key_policy(pub: Path, models: tuple[str, ...] = ("*",), **kw: object) -> TrustPolicy:
    return TrustPolicy.model_validate({"signer": [{"name": "k", "public_key": pub, "models": models, **kw}]})


@pytest.fixture()
def signing_key(tmp_path: Path) -> tuple[Path, Path]:
    priv = tmp_path / "signing.pem"
    return priv, create_signing_key(priv)


@pytest.fixture()
def sealed(model: Path, kek: Path, signing_key: tuple[Path, Path]) -> Path:
    out = model.parent / "sealed"
    seal_dir(model, out, kek, segment_size=64 * 1024, origin={"source_uri": "file:///models/test"})
    sign_dir(out, private_key=signing_key[0])
    return out


def check_sealed(path: Path, kek: Path, policy: TrustPolicy, name: str = "test-model") -> int:
    manifest = verify_signature(path, policy, name)
    assert manifest is not None
    with SealedReader(path, kek) as r:
        return check_files(path, manifest, header_file=r.header_file())


def test_bastion_signature_verifies_with_stock_cli_without_the_key(
    sealed: Path, signing_key: tuple[Path, Path]
) -> None:
    run = subprocess.run(
        [
            MODEL_SIGNING,
            "verify",
            "key",
            str(sealed),
            "--signature",
            str(sealed / "model.sig"),
            "--public_key",
            str(signing_key[1]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (sealed / "config.json").write_text('{"model_type": "evil"}')
    run = subprocess.run(
        [
            MODEL_SIGNING,
            "verify",
            "key",
            str(sealed),
            "--signature",
            str(sealed / "model.sig"),
            "--public_key",
            str(signing_key[1]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0


def test_sealed_signature_checks_small_files_and_the_decoded_header(
    sealed: Path, kek: Path, signing_key: tuple[Path, Path]
) -> None:
    policy = key_policy(signing_key[1])
    # config, tokenizer_config, chat template and weights.ctxh are hashed; *.ctxd are covered by the table
    assert check_sealed(sealed, kek, policy) == 4
    manifest = verify_signature(sealed, policy, "test-model")
    assert manifest is not None and manifest.model_digest.startswith("sha256:") and len(manifest.model_digest) == 71
    assert manifest.identity.startswith("sha256:") and manifest.signer == "k"


@pytest.mark.parametrize("victim", ["config.json", "tokenizer_config.json", "chat_template.jinja", "weights.ctxh"])
def test_flipped_bit_in_a_signed_file_is_refused(
    sealed: Path, kek: Path, signing_key: tuple[Path, Path], victim: str
) -> None:
    p = sealed / victim
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))
    policy = key_policy(signing_key[1])
    manifest = verify_signature(sealed, policy, "test-model")
    assert manifest is not None
    # A header flip is caught by the reader (format, key commitment) or by the signature; either way the
    # error names the file.
    with pytest.raises(BastionError, match=victim.replace(".", r"\.")), SealedReader(sealed, kek) as r:
        check_files(sealed, manifest, header_file=r.header_file())


def test_flipped_bundle_missing_extra_and_unsigned_refused(
    sealed: Path, kek: Path, signing_key: tuple[Path, Path], tmp_path: Path
) -> None:
    policy = key_policy(signing_key[1])
    sig = sealed / "model.sig"
    good = sig.read_bytes()
    # one bit in the signature value (base64 text) or anywhere in the JSON
    for offset in (good.index(b'"sig"') + 12, len(good) // 3):
        b = bytearray(good)
        b[offset] ^= 0x01
        sig.write_bytes(bytes(b))
        with pytest.raises(IntegrityError, match="model.sig"):
            verify_signature(sealed, policy, "test-model")
    sig.write_bytes(good)

    (sealed / "extra.py").write_text("print('hi')")
    with pytest.raises(IntegrityError, match="extra.py: not covered"):
        check_sealed(sealed, kek, policy)
    (sealed / "extra.py").unlink()

    moved = tmp_path / "tok"
    shutil.move(sealed / "tokenizer_config.json", moved)
    with pytest.raises(IntegrityError, match="tokenizer_config.json: signed .* but missing"):
        check_sealed(sealed, kek, policy)
    shutil.move(moved, sealed / "tokenizer_config.json")

    sig.unlink()
    with pytest.raises(IntegrityError, match="does not allow model 'test-model' unsigned"):
        verify_signature(sealed, policy, "test-model")
    lax = TrustPolicy.model_validate({"unsigned_models": ["test-*"]})
    assert verify_signature(sealed, lax, "test-model") is None


def test_untrusted_key_and_wrong_model_name_refused(
    sealed: Path, tmp_path: Path, signing_key: tuple[Path, Path]
) -> None:
    other = create_signing_key(tmp_path / "other.pem")
    with pytest.raises(IntegrityError, match="not signed by any signer"):
        verify_signature(sealed, key_policy(other), "test-model")
    with pytest.raises(IntegrityError, match="names no signer for model 'prod-model'"):
        verify_signature(sealed, key_policy(signing_key[1], models=("test-*",)), "prod-model")


def test_splicing_a_file_signed_for_another_model_is_refused(
    model: Path, kek: Path, sealed: Path, signing_key: tuple[Path, Path]
) -> None:
    (model / "config.json").write_text('{"model_type": "llama", "other": true}')
    out2 = model.parent / "sealed2"
    seal_dir(model, out2, kek, segment_size=64 * 1024)
    sign_dir(out2, private_key=signing_key[0])
    shutil.copy(out2 / "config.json", sealed / "config.json")
    with pytest.raises(IntegrityError, match="config.json: digest does not match"):
        check_sealed(sealed, kek, key_policy(signing_key[1]))


@pytest.mark.parametrize("curve", ["p256", "p384"])
def test_stock_cli_key_signature_accepted(model: Path, tmp_path: Path, curve: str) -> None:
    priv = tmp_path / f"{curve}.pem"
    pub = create_signing_key(priv, curve)
    run = subprocess.run(
        [MODEL_SIGNING, "sign", "key", str(model), "--signature", str(model / "model.sig"), "--private_key", str(priv)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    manifest = verify_signature(model, key_policy(pub), "plain")
    assert manifest is not None
    assert check_files(model, manifest) == 5  # every file hashed (a plain directory: no sealed header)
    (model / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(IntegrityError, match="model-00002-of-00002.safetensors: digest does not match"):
        check_files(model, manifest)


def test_stock_library_range_hashed_signature_accepted(model: Path, tmp_path: Path) -> None:
    import model_signing

    priv = tmp_path / "k.pem"
    pub = create_signing_key(priv)
    hashing = (
        model_signing.hashing.Config().use_shard_serialization(shard_size=4096).set_ignored_paths(paths=["model.sig"])
    )
    model_signing.signing.Config().set_hashing_config(hashing).use_elliptic_key_signer(private_key=priv).sign(
        model, model / "model.sig"
    )
    bundle = json.loads((model / "model.sig").read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert statement["predicate"]["serialization"]["method"] == "shards"
    assert isinstance(statement["predicate"]["serialization"]["shard_size"], float)  # the interop quirk
    assert {r["algorithm"] for r in statement["predicate"]["resources"]} == {"sha256-sharded-4096"}
    manifest = verify_signature(model, key_policy(pub), "plain")
    assert manifest is not None
    assert any(e.start is not None for es in manifest.entries.values() for e in es)
    assert check_files(model, manifest) == 5
    p = model / "model-00001-of-00002.safetensors"
    b = bytearray(p.read_bytes())
    b[5000] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(IntegrityError, match=r"bytes 4096\.\.8192: digest does not match"):
        check_files(model, manifest)


def test_range_entries_checked_in_one_pass_whatever_the_chunking(model: Path, tmp_path: Path) -> None:
    """FileCheck (the streaming comparison check_files and the verified copy use) gives the same verdict
    however the bytes arrive: chunks smaller than, equal to and straddling the signed ranges."""
    import model_signing

    from bastion.weights.signing import FileCheck

    priv = tmp_path / "k.pem"
    pub = create_signing_key(priv)
    hashing = (
        model_signing.hashing.Config().use_shard_serialization(shard_size=4096).set_ignored_paths(paths=["model.sig"])
    )
    model_signing.signing.Config().set_hashing_config(hashing).use_elliptic_key_signer(private_key=priv).sign(
        model, model / "model.sig"
    )
    manifest = verify_signature(model, key_policy(pub), "plain")
    assert manifest is not None
    name = "model-00001-of-00002.safetensors"
    data = (model / name).read_bytes()
    assert len(manifest.entries[name]) > 3
    for chunk in (1000, 4096, 5000, len(data)):
        check = FileCheck(model / name, manifest.entries[name])
        for i in range(0, len(data), chunk):
            check.update(data[i : i + chunk])
        check.finish(len(data))
    tampered = bytearray(data)
    tampered[9000] ^= 1
    check = FileCheck(model / name, manifest.entries[name])
    with pytest.raises(IntegrityError, match=r"bytes 8192\.\.12288: digest does not match"):
        for i in range(0, len(data), 1000):
            check.update(bytes(tampered[i : i + 1000]))
    for short in (data[:-1], data + b"x"):  # a byte missing or one past the last signed range
        check = FileCheck(model / name, manifest.entries[name])
        with pytest.raises(IntegrityError, match="do not cover the file exactly|digest does not match"):
            check.update(short)
            check.finish(len(short))


def _pki(d: Path, san: str) -> dict[str, Path]:
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("model-ca"))
        .issuer_name(name("model-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("release-signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca": d / "ca.pem", "leaf": d / "leaf.pem", "key": d / "leaf.key"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["leaf"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    out["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out


def test_certificate_chain_signatures_and_identities(model: Path, tmp_path: Path) -> None:
    pki = _pki(tmp_path, "spiffe://corp.example/ml/release")
    run = subprocess.run(
        [
            MODEL_SIGNING,
            "sign",
            "certificate",
            str(model),
            "--signature",
            str(model / "model.sig"),
            "--private_key",
            str(pki["key"]),
            "--signing_certificate",
            str(pki["leaf"]),
            "--certificate_chain",
            str(pki["ca"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    def policy(identities: list[str], ca: Path) -> TrustPolicy:
        return TrustPolicy.model_validate(
            {"signer": [{"name": "pki", "certificate_chain": [ca], "identities": identities, "models": ["*"]}]}
        )

    manifest = verify_signature(model, policy(["spiffe://corp.example/ml/*"], pki["ca"]), "plain")
    assert manifest is not None and manifest.identity == "spiffe://corp.example/ml/release"
    assert check_files(model, manifest) == 5
    with pytest.raises(IntegrityError, match="not signed by any signer"):
        verify_signature(model, policy(["spiffe://other.example/*"], pki["ca"]), "plain")
    (tmp_path / "o").mkdir()
    other = _pki(tmp_path / "o", "spiffe://corp.example/ml/release")
    with pytest.raises(IntegrityError, match="not signed by any signer"):
        verify_signature(model, policy(["spiffe://corp.example/ml/*"], other["ca"]), "plain")
