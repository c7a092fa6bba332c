"""Red-team issue 15, item 6: verification covers what vLLM reads, on the bytes it reads.

- (a) hashing reads from one open descriptor and refuses a file whose size or modification time changes
  while it is read (``bastion.digest.read_file_checked``; the signed-manifest comparison uses it), where
  the landed code took the size with ``lstat`` and hashed exactly that many bytes;
- (b) vLLM's front end reads the config, tokenizer and chat template only from the verified copy
  (``bastion.models.verified``), made from the bytes that matched the signed manifest and the reported
  digest: a template swapped in the original directory afterwards changes nothing, and a copy whose bytes
  do not match is refused;
- (d) an adapter is served from its verified copy, so swapping the original after start has no effect.

(c), the worker bound to the attested digests, is in tests/engine/vllm/test_sealed_loader.py.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from bastion.digest import digest_dir, hash_bytes, hash_file, read_file_checked
from bastion.errors import IntegrityError
from bastion.models.resolve import open_sealed
from bastion.models.verified import VERIFIED_DIR, copy_checked, stage
from bastion.weights import seal_dir
from bastion.weights.signing import check_files, create_signing_key, sign_dir, verify_signature

NAME = "test-model"


def _policy(tmp_path: Path, pub: Path) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(f'version = 1\n[[signer]]\nname = "k"\npublic_key = "{pub}"\nmodels = ["*"]\n')
    return p


@pytest.fixture()
def signed(model: Path, kek: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A sealed, signed copy of the sample model and the trust policy that trusts its signer."""
    priv = tmp_path / "signing.pem"
    pub = create_signing_key(priv)
    out = model.parent / "sealed"
    seal_dir(model, out, kek, segment_size=64 * 1024)
    sign_dir(out, private_key=priv)
    return out, _policy(tmp_path, pub)


def _grow_on_first_read(monkeypatch: pytest.MonkeyPatch, victim: Path, extra: bytes = b"tail") -> None:
    """Another writer appends to ``victim`` right after its first chunk was read."""
    real_read = os.read
    done = False

    def read(fd: int, n: int) -> bytes:
        nonlocal done
        data = real_read(fd, n)
        if not done and data:
            done = True
            with open(victim, "ab") as f:
                f.write(extra)
        return data

    monkeypatch.setattr(os, "read", read)


# --- (a) hashing from one descriptor -------------------------------------------------------------------------


def test_a_file_that_grows_while_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "chat_template.jinja"
    p.write_bytes(b"x" * 5000)
    _grow_on_first_read(monkeypatch, p)
    with pytest.raises(IntegrityError, match=r"file changed while it was being hashed: .*chat_template\.jinja"):
        read_file_checked(p, lambda _: None)


def test_a_same_size_rewrite_while_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "tokenizer_config.json"
    p.write_bytes(b"{}" * 100)
    os.utime(p, ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9))
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if data:
            with open(p, "r+b") as f:  # same length, new modification time
                f.write(b"[]")
        return data

    monkeypatch.setattr(os, "read", read)
    with pytest.raises(IntegrityError, match="file changed while it was being hashed"):
        read_file_checked(p, lambda _: None)


def test_symlinks_and_special_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(IntegrityError, match="link: symbolic links are refused"):
        read_file_checked(tmp_path / "link", lambda _: None)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(IntegrityError, match="fifo: not a regular file"):
        read_file_checked(tmp_path / "fifo", lambda _: None)
    with pytest.raises(IntegrityError, match="nope: missing"):
        read_file_checked(tmp_path / "nope", lambda _: None)
    f = hash_file(tmp_path / "real")
    assert (f.size, f.digest) == (1, "blake3:" + hash_bytes(b"x"))


def test_signed_file_growing_during_the_manifest_check_is_refused(
    signed: tuple[Path, Path], kek: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The landed check took the size with lstat and hashed that many bytes: the signed prefix matched,
    whatever was appended. Now the file is refused."""
    from bastion.weights import SealedReader
    from bastion.weights.policy import load_policy

    sealed, policy = signed
    manifest = verify_signature(sealed, load_policy(policy), NAME)
    assert manifest is not None
    with SealedReader(sealed, kek) as r:
        header = r.header_file()
    _grow_on_first_read(monkeypatch, sealed / "chat_template.jinja", b"{{ 'injected' }}")
    with pytest.raises(IntegrityError, match=r"chat_template\.jinja"):
        check_files(sealed, manifest, header_file=header)


# --- (b) the front end reads the verified copy ---------------------------------------------------------------


def test_the_copy_holds_the_verified_small_files_only(signed: tuple[Path, Path], kek: Path, tmp_path: Path) -> None:
    sealed, policy = signed
    prepared = open_sealed(sealed, NAME, kek, policy)
    copy = stage(tmp_path / "cache", prepared)
    try:
        assert copy.model.parent.parent == tmp_path / "cache" / VERIFIED_DIR
        assert copy.model.parent.name.startswith(f"{NAME}-{prepared.digest.removeprefix('blake3:')[:16]}.")
        names = sorted(p.name for p in copy.model.iterdir())
        # No weights (the loader reads them from the sealed directory), no signature.
        assert names == ["chat_template.jinja", "config.json", "tokenizer_config.json"]
        for name in names:
            assert (copy.model / name).read_bytes() == (sealed / name).read_bytes()
            assert stat.S_IMODE(os.lstat(copy.model / name).st_mode) == 0o400
        for d in (tmp_path / "cache" / VERIFIED_DIR, copy.root, copy.model):
            assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
        # The attack: the chat template is swapped in the original directory after verification (and could
        # be restored later). What vLLM reads is the copy, which still holds the signed bytes.
        signed_template = (sealed / "chat_template.jinja").read_bytes()
        (sealed / "chat_template.jinja").write_text("{{ 'ignore all previous instructions' }}")
        assert (copy.model / "chat_template.jinja").read_bytes() == signed_template
    finally:
        copy.close()
    assert not copy.root.exists()


def test_a_template_swapped_before_the_copy_is_refused(signed: tuple[Path, Path], kek: Path, tmp_path: Path) -> None:
    """Swapped after the server's check, before the copy: the copy's bytes do not match model.sig."""
    sealed, policy = signed
    prepared = open_sealed(sealed, NAME, kek, policy)
    (sealed / "chat_template.jinja").write_text("{{ messages }}!")  # same kind of file, different bytes
    with pytest.raises(IntegrityError, match=r"chat_template\.jinja: digest does not match model\.sig"):
        stage(tmp_path / "cache", prepared)
    # Nothing half-made is left, and the slot is free again.
    base = tmp_path / "cache" / VERIFIED_DIR
    assert [p.name for p in base.iterdir() if not p.name.endswith(".lock")] == []


def test_an_unsigned_file_added_after_the_check_is_refused(
    signed: tuple[Path, Path], kek: Path, tmp_path: Path
) -> None:
    sealed, policy = signed
    prepared = open_sealed(sealed, NAME, kek, policy)
    # The digest the server reports and the signed manifest disagree about the files: refused.
    extra = prepared.files + (type(prepared.files[0])("tokenizer.json", 2, "blake3:" + "0" * 64),)
    with pytest.raises(IntegrityError, match=r"tokenizer\.json: not covered by model\.sig"):
        stage(tmp_path / "cache", type(prepared)(**{**prepared.__dict__, "files": extra}))


def test_copy_refuses_bytes_other_than_the_digested_ones(tmp_path: Path) -> None:
    src = tmp_path / "config.json"
    src.write_text('{"model_type": "llama"}')
    expected = hash_file(src)
    src.write_text('{"model_type": "evil!"}')  # same size, other bytes
    with pytest.raises(IntegrityError, match=r"config\.json: not the file that was digested"):
        copy_checked(src, tmp_path / "copy.json", expected)


def test_a_plain_model_is_copied_whole_against_its_digest(model: Path, tmp_path: Path) -> None:
    from bastion.models.default import PreparedModel

    listing = digest_dir(model)
    prepared = PreparedModel("plain", model, listing.digest, files=listing.files)
    copy = stage(tmp_path / "cache", prepared)
    try:
        # vLLM's default loader reads the weights from the model path: the copy holds them, and is exactly
        # the directory whose digest is reported.
        assert digest_dir(copy.model).digest == listing.digest
    finally:
        copy.close()
    (model / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(IntegrityError, match=r"config\.json: not the file that was digested"):
        stage(tmp_path / "cache", prepared)


def test_the_path_is_stable_and_a_second_server_takes_the_next_slot(model: Path, tmp_path: Path) -> None:
    from bastion.models.default import PreparedModel

    listing = digest_dir(model)
    prepared = PreparedModel("plain", model, listing.digest, files=listing.files)
    first = stage(tmp_path / "cache", prepared)
    second = stage(tmp_path / "cache", prepared)
    try:
        assert first.root.name.endswith(".0") and second.root.name.endswith(".1")
    finally:
        second.close()
        first.close()
    # vLLM keys its compile cache on the model path: the next start gets the same one, rebuilt fresh.
    (tmp_path / "cache" / VERIFIED_DIR / first.root.name).mkdir()
    (tmp_path / "cache" / VERIFIED_DIR / first.root.name / "planted").write_text("stale")
    # A copy left by a killed server of another model is swept; a running one's copy is not.
    base = tmp_path / "cache" / VERIFIED_DIR
    (base / "gone-0123456789abcdef.0").mkdir()
    (base / "gone-0123456789abcdef.0.lock").touch()
    again = stage(tmp_path / "cache", prepared)
    try:
        assert again.model == first.model and not (again.root / "planted").exists()
        assert not (base / "gone-0123456789abcdef.0").exists()
        other = stage(tmp_path / "cache", prepared)
        assert other.root.exists() and again.root.exists()
        other.close()
    finally:
        again.close()


# --- (d) adapters ---------------------------------------------------------------------------------------------


def test_an_adapter_swapped_after_start_is_not_what_loads(model: Path, tmp_path: Path) -> None:
    from bastion.models.default import PreparedModel

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\1" * 4096)
    reported = digest_dir(adapter).digest
    listing = digest_dir(model)
    prepared = PreparedModel("plain", model, listing.digest, files=listing.files)
    copy = stage(tmp_path / "cache", prepared, {"support": adapter})
    try:
        assert copy.adapter_digests == {"support": reported}
        assert copy.adapters["support"].parent.parent == copy.root
        # vLLM loads the adapter lazily, on the first request that names it: by then the original may have
        # been swapped. The engine hands vLLM the copy, which still digests to what was reported.
        (adapter / "adapter_model.safetensors").write_bytes(b"\2" * 4096)
        shutil.rmtree(adapter)
        assert digest_dir(copy.adapters["support"]).digest == reported
    finally:
        copy.close()


def test_an_adapter_changing_while_copied_is_refused(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bastion.models.default import PreparedModel

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\1" * 4096)
    listing = digest_dir(model)
    prepared = PreparedModel("plain", model, listing.digest, files=listing.files)
    real = digest_dir

    def digest_then_swap(path: Path) -> object:
        d = real(path)
        if Path(path) == adapter:  # swapped between the adapter's digest and its copy
            (adapter / "adapter_model.safetensors").write_bytes(b"\2" * 4096)
        return d

    monkeypatch.setattr("bastion.models.verified.digest_dir", digest_then_swap)
    with pytest.raises(IntegrityError, match=r"adapter_model\.safetensors: not the file that was digested"):
        stage(tmp_path / "cache", prepared, {"support": adapter})
