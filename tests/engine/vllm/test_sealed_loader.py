"""The vLLM loader's weight iterator over a sealed model: every tensor exact, every byte read once and
verified, batch boundaries anywhere, tampering refused mid-stream with the file and segment named; and the
loader's binding to what the server attested (``check_attested``)."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

from bastion.digest import digest_dir, hash_bytes
from bastion.engine.process import SealedLoad
from bastion.engine.vllm.sealed_loader import BatchBuffers, check_attested, sealed_weights
from bastion.errors import IntegrityError
from bastion.weights import SealedReader, seal_dir
from bastion.weights.policy import TrustPolicy
from bastion.weights.signing import create_signing_key, sign_dir, verify_sealed

SEG = 64 * 1024


@pytest.fixture()
def sealed(model: Path, kek: Path) -> Path:
    out = model.parent / "sealed"
    seal_dir(model, out, kek, segment_size=SEG)
    return out


@pytest.mark.parametrize("batch", [1, 4096, SEG + 3, 1 << 30])
def test_every_tensor_exact_and_every_byte_verified(model: Path, sealed: Path, kek: Path, batch: int) -> None:
    expected: dict[str, torch.Tensor] = {}
    for f in sorted(model.glob("*.safetensors")):
        expected.update(load_file(str(f)))
    stats: dict[str, int] = {}
    with SealedReader(sealed, kek) as r:
        got = dict(sealed_weights(r, stats, batch_bytes=batch))
        total = sum(length for _, _, length in r.files())
    assert set(got) == set(expected)
    for name, t in expected.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape
        assert torch.equal(got[name], t), name
    assert stats == {"tensors": len(expected), "bytes": total, "files": 2}


@pytest.mark.parametrize("batch", [1, 4096, SEG - 1, SEG + 3, 1 << 30])
def test_each_segment_is_decrypted_once_and_whole(
    model: Path, sealed: Path, kek: Path, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: batches end at tensor ends, anywhere inside a segment. Rust is asked for whole segments only,
    each once (a batch ending inside a segment decrypts it whole and hands its tail to the next batch), so the
    ranges read tile every data file from segment boundary to segment boundary (or the file's end)."""
    reads: list[tuple[int, int, int]] = []
    real = SealedReader.read_range_into

    def spy(self: SealedReader, file_index: int, begin: int, out: memoryview) -> None:
        reads.append((file_index, begin, begin + len(out)))
        real(self, file_index, begin, out)

    monkeypatch.setattr(SealedReader, "read_range_into", spy)
    expected = _expected(model)
    with SealedReader(sealed, kek) as r:
        got = dict(sealed_weights(r, batch_bytes=batch))
        lengths = [length for _, _, length in r.files()]
    assert all(torch.equal(got[n], t) for n, t in expected.items()) and set(got) == set(expected)
    for fi, length in enumerate(lengths):
        ranges = sorted((b, e) for f, b, e in reads if f == fi)
        assert ranges[0][0] == 0 and ranges[-1][1] == length, (fi, ranges)
        for (_, e), (b, _) in zip(ranges, ranges[1:], strict=False):
            assert e == b, f"file {fi}: ranges overlap or leave a gap: {ranges}"
        assert all(b % SEG == 0 and (e % SEG == 0 or e == length) for b, e in ranges), (fi, ranges)


def _expected(model: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_reused_batch_buffers_never_overwrite_a_tensor_the_model_kept(
    tmp_path: Path, kek: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: batches are decrypted into buffers the loader reuses. A model that keeps some yielded tensors
    (as views, never copied) and copies the others must find every kept tensor intact at the end, while the
    copied ones' buffers are reused (else nothing was gained)."""
    taken: list[bool] = []
    real_take = BatchBuffers.take

    def spy(self: BatchBuffers, size: int) -> mmap.mmap:
        pooled = {id(b) for b in self._pool}  # ids, not references: a reference would make a buffer look in use
        buf = real_take(self, size)
        taken.append(id(buf) in pooled)
        return buf

    monkeypatch.setattr(BatchBuffers, "take", spy)
    rng = np.random.default_rng(19)
    model = tmp_path / "many"
    model.mkdir()
    save_file(
        {f"layers.{i}.w": rng.standard_normal((17, 31), dtype=np.float32) for i in range(30)},
        str(model / "m.safetensors"),
    )
    (model / "config.json").write_text('{"model_type": "llama"}')
    sealed = tmp_path / "many-sealed"
    seal_dir(model, sealed, kek, segment_size=SEG)
    expected = _expected(model)
    kept: dict[str, torch.Tensor] = {}
    copied: dict[str, torch.Tensor] = {}
    with SealedReader(sealed, kek) as r:
        for k, (name, t) in enumerate(sealed_weights(r, batch_bytes=1000)):
            if k % 3 == 0:
                kept[name] = t.view(-1)[:]  # a view of a view: still the batch buffer's memory
            else:
                copied[name] = t.clone()
            del t
    assert kept and copied and set(kept) | set(copied) == set(expected)
    for name, t in kept.items():
        assert torch.equal(t, expected[name].view(-1)), name
    for name, t in copied.items():
        assert torch.equal(t, expected[name]), name
    assert sum(taken) >= len(taken) // 3, f"buffers reused {sum(taken)} of {len(taken)} batches"


def test_batch_buffers_hand_out_only_unreferenced_memory() -> None:
    pool = BatchBuffers(keep=2)
    a, b = pool.take(100), pool.take(100)
    assert a is not b
    view = memoryview(a)[10:20]
    del a
    c = pool.take(100)  # both pooled buffers referenced: a new one; the oldest (held by `view`) leaves the pool
    assert c is not b and all(x is not view.obj for x in pool._pool) and pool._pool[-1] is c
    view[:] = b"k" * 10
    del c
    d = pool.take(60)  # `c` is free again
    assert d is pool._pool[-1] and len(d) == 100
    del b, d
    e = pool.take(500)  # larger than any free buffer: it replaces the smallest free one
    assert len(e) == 500 and sorted(len(x) for x in pool._pool) == [100, 500]
    del e
    assert len(pool.take(200)) == 500
    assert bytes(view) == b"k" * 10  # the memory that left the pool was never handed out again


def test_a_flipped_segment_stops_the_stream(sealed: Path, kek: Path) -> None:
    data = sealed / "weights-00001.ctxd"
    b = bytearray(data.read_bytes())
    b[SEG + 100] ^= 0x04
    data.write_bytes(bytes(b))
    with SealedReader(sealed, kek) as r, pytest.raises(IntegrityError, match=r"weights-00001\.ctxd segment 1"):
        for _ in sealed_weights(r, batch_bytes=4096):
            pass


# --- red-team issue 15, item 6 (c): the loading worker is bound to the digests the server attested ----------


def _contract(sealed_dir: Path, header: bytes, subject: str) -> SealedLoad:
    return SealedLoad(
        trust_policy=sealed_dir / "policy.toml",
        served_model="test-model",
        key_provider={"BASTION_KEK_FILE": "/k"},
        model_dir=sealed_dir,
        digest=digest_dir(sealed_dir).digest,
        header_digest="blake3:" + hash_bytes(header),
        subject_digest=subject,
    )


def test_the_worker_refuses_another_artefact_the_policy_also_allows(model: Path, kek: Path, tmp_path: Path) -> None:
    """Two releases of the same model, both signed by a signer the trust policy allows for its name: the
    server checked and reports release A; release B swapped in before the worker loads verifies against
    the policy, yet is not what the server attested, so the worker refuses it."""
    priv = tmp_path / "signing.pem"
    pub = create_signing_key(priv)
    policy = TrustPolicy.model_validate({"signer": [{"name": "k", "public_key": pub, "models": ["*"]}]})
    releases = {}
    for tag in ("a", "b"):
        (model / "config.json").write_text(f'{{"model_type": "llama", "release": "{tag}"}}')
        out = tmp_path / f"release-{tag}"
        seal_dir(model, out, kek, segment_size=SEG)
        sign_dir(out, private_key=priv)
        with SealedReader(out, kek) as r:
            header = r.header_file()
        manifest = verify_sealed(out, policy, "test-model", header_file=header, origin=None)
        assert manifest is not None  # both pass the trust policy
        releases[tag] = (out, header, manifest)
    a_dir, a_header, a_manifest = releases["a"]
    attested = _contract(a_dir, a_header, a_manifest.model_digest)
    check_attested(attested, a_header, a_manifest)  # what the server attested loads

    _, b_header, b_manifest = releases["b"]
    with pytest.raises(IntegrityError, match=r"weights\.ctxh: not the artefact the server attested") as info:
        check_attested(attested, b_header, b_manifest)
    assert attested.header_digest in str(info.value) and hash_bytes(b_header) in str(info.value)
    # The same header under another signature (re-signed, other OMS digest) is refused too.
    with pytest.raises(IntegrityError, match=r"model\.sig: not the signature the server attested") as info:
        check_attested(attested, a_header, b_manifest)
    assert a_manifest.model_digest in str(info.value) and b_manifest.model_digest in str(info.value)
    # An unsigned artefact where a signed one was attested, and the reverse.
    with pytest.raises(IntegrityError, match=r"found \(unsigned\)"):
        check_attested(attested, a_header, None)
    unsigned = _contract(a_dir, a_header, "")
    check_attested(unsigned, a_header, None)
    with pytest.raises(IntegrityError, match=r"expected OMS digest \(unsigned\)"):
        check_attested(unsigned, a_header, a_manifest)
