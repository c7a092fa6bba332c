"""Binding contract of bastion.weights (sealed format): round trip, tamper corpus, keys, errors."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
from safetensors.numpy import load, load_file

from bastion import errors
from bastion.weights import (
    SealedReader,
    create_kek,
    inspect,
    rekey,
    seal_dir,
    verify_ciphertext,
)

SEG = 64 * 1024
D1 = "weights-00001.ctxd"


def seal(model: Path, kek: Path, name: str = "sealed", **kw: object) -> Path:
    out = model.parent / name
    seal_dir(model, out, kek, segment_size=SEG, **kw)
    return out


def load_all(sealed: Path, kek: Path) -> None:
    with SealedReader(sealed, kek) as r:
        r.verify_all()
        for n in r.tensor_names():
            r.read_tensor(n)


def flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x01
    path.write_bytes(bytes(b))


def layout(sealed: Path) -> tuple[int, int, int]:
    """(json end, tag table start, hash table start) of weights.ctxh."""
    b = (sealed / "weights.ctxh").read_bytes()
    n = int.from_bytes(b[12:20], "little")
    segs = inspect(sealed)["total_segments"]
    return 20 + n, 20 + n, 20 + n + 16 * segs


@pytest.mark.parametrize(("aead", "hash_"), [("aes-256-gcm", "blake3"), ("chacha20-poly1305", "sha256")])
def test_round_trip_every_tensor(model: Path, kek: Path, aead: str, hash_: str) -> None:
    out = seal(model, kek, aead=aead, hash=hash_, context={"model": "tiny"}, origin={"revision": "abc"})
    with SealedReader(out, kek) as r:
        names = r.tensor_names()
        assert len(names) == 6
        for fi, (data_name, source, length) in enumerate(r.files()):
            original = load_file(str(model / source))
            for name, arr in original.items():
                info = r.tensor_info(name)
                assert info.file == fi and info.dtype and info.shape == arr.shape
                assert r.read_tensor(name) == arr.tobytes()
            whole = r.read_range(fi, 0, length)
            assert whole == (model / source).read_bytes()
            assert {k: v.tobytes() for k, v in load(whole).items()} == {k: v.tobytes() for k, v in original.items()}
            assert os.path.getsize(out / data_name) == length
        assert r.read_range(0, 5, 5) == b""
        with pytest.raises(errors.InvalidArgument):
            r.read_range(0, 10, 1 << 40)
        with pytest.raises(errors.InvalidArgument):
            r.tensor_info("nope")
    h = inspect(out)
    assert h["aead"] == aead and h["hash"] == hash_ and "wrapped_dek" not in h["key"]
    assert h["key"]["context"]["model"] == "tiny" and h["origin"] == {"revision": "abc"}
    assert (out / "config.json").read_text() == '{"model_type": "llama"}'
    assert (out / "chat_template.jinja").exists()
    assert verify_ciphertext(out).files == 2


def test_read_range_into_a_callers_buffer(model: Path, kek: Path) -> None:
    """Issue 19: decryption into a buffer the caller owns and reuses (the loader's batch buffers, pinned memory
    for a GPU copy): the same bytes as ``read_range``; anything but a writable, contiguous byte buffer is refused
    naming ``out``; a failed read leaves the buffer zeroed, never holding bytes that did not authenticate."""
    import array

    import numpy as np

    out = seal(model, kek)
    with SealedReader(out, kek) as r:
        _, _, length = r.files()[0]
        want = r.read_range(0, 7, length)
        buf = bytearray(b"\xff" * (length + 9))
        with memoryview(buf) as whole:
            r.read_range_into(0, 7, whole[: length - 7])
        assert bytes(buf[: length - 7]) == want and buf[length - 7 :] == b"\xff" * 16
        arr = np.full(SEG + 3, 0xFF, dtype=np.uint8)
        r.read_range_into(0, SEG - 1, arr)  # crosses two segment boundaries, partial segments at both ends
        assert arr.tobytes() == r.read_range(0, SEG - 1, 2 * SEG + 2)
        for bad in (b"\x00" * 8, memoryview(bytearray(16))[::2], array.array("f", [0.0] * 4), "text"):
            with pytest.raises(errors.InvalidArgument, match="out"):
                r.read_range_into(0, 0, bad)
        with pytest.raises(errors.InvalidArgument):
            r.read_range_into(0, length - 2, bytearray(8))  # past the end of the file
    flip(out / D1, SEG + 5)
    with SealedReader(out, kek) as r:
        buf = bytearray(b"\xff" * (2 * SEG + 10))
        with pytest.raises(errors.IntegrityError, match="segment 1"):
            r.read_range_into(0, 0, buf)
        assert buf == bytearray(len(buf))


def test_reader_is_thread_safe_and_closes(model: Path, kek: Path) -> None:
    out = seal(model, kek)
    r = SealedReader(out, kek)
    want = r.read_tensor("embed.weight")
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(r.read_tensor("embed.weight") == want)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8
    r.close()
    with pytest.raises(errors.AlreadyFinalized):
        r.read_tensor("embed.weight")


def test_flips_in_header_ciphertext_tags_hashes_refused(model: Path, kek: Path) -> None:
    out = seal(model, kek)
    ctxh = out / "weights.ctxh"
    good = ctxh.read_bytes()
    json_end, tags, hashes = layout(out)
    for off in [0, 9, 13, 20, 21, json_end // 2, json_end - 2, tags + 3, hashes + 40]:
        ctxh.write_bytes(good)
        flip(ctxh, off)
        with pytest.raises(errors.IntegrityError):
            load_all(out, kek)
    ctxh.write_bytes(good)
    flip(out / D1, SEG + 5)
    with pytest.raises(errors.IntegrityError, match=r"weights-00001\.ctxd segment 1"):
        load_all(out, kek)
    with pytest.raises(errors.IntegrityError, match="segment 1"):
        verify_ciphertext(out)


def test_truncated_extra_missing_swapped(model: Path, kek: Path) -> None:
    out = seal(model, kek)
    data = (out / D1).read_bytes()
    (out / D1).write_bytes(data[:-1])
    with pytest.raises(errors.IntegrityError, match="truncated"):
        load_all(out, kek)
    (out / D1).write_bytes(data + b"\0")
    with pytest.raises(errors.IntegrityError, match="extra bytes"):
        load_all(out, kek)
    (out / D1).unlink()
    with pytest.raises(errors.IntegrityError, match="missing"):
        load_all(out, kek)
    (out / D1).write_bytes(data[SEG : 2 * SEG] + data[:SEG] + data[2 * SEG :])
    with pytest.raises(errors.IntegrityError, match="segment 0"):
        load_all(out, kek)


def test_splices_from_another_model_with_same_kek_refused(model: Path, kek: Path) -> None:
    a, b = seal(model, kek, "a"), seal(model, kek, "b")
    da, db = bytearray((a / D1).read_bytes()), (b / D1).read_bytes()
    da[SEG : 2 * SEG] = db[SEG : 2 * SEG]
    (a / D1).write_bytes(bytes(da))
    with pytest.raises(errors.IntegrityError, match="segment 1"):
        load_all(a, kek)
    # Whole file, and with the other model's tag and hash entries too.
    shutil.copy(b / D1, a / D1)
    ca, cb = bytearray((a / "weights.ctxh").read_bytes()), (b / "weights.ctxh").read_bytes()
    _, ta, ha = layout(a)
    _, tb, hb = layout(b)
    nseg = (len(db) + SEG - 1) // SEG
    ca[ta : ta + 16 * nseg] = cb[tb : tb + 16 * nseg]
    ca[ha : ha + 32 * nseg] = cb[hb : hb + 32 * nseg]
    (a / "weights.ctxh").write_bytes(bytes(ca))
    assert verify_ciphertext(a).segments > 0  # consistent tables, so only the AEAD can tell
    with pytest.raises(errors.IntegrityError, match="authentication failed"):
        load_all(a, kek)


def test_wrong_kek_and_rekey(model: Path, kek: Path, tmp_path: Path) -> None:
    out = seal(model, kek)
    other = tmp_path / "kek2"
    create_kek(other)
    with pytest.raises(errors.IntegrityError, match="unwrap"):
        SealedReader(out, other)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "weights.ctxh"}
    digest = inspect(out)["header_digest"]
    rekey(out, kek, other)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "weights.ctxh"} == before
    assert inspect(out)["header_digest"] == digest
    with pytest.raises(errors.IntegrityError):
        SealedReader(out, kek)
    load_all(out, other)


def test_kek_file_rules(model: Path, kek: Path, tmp_path: Path) -> None:
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600
    with pytest.raises(errors.NativeIOError):
        create_kek(kek)  # never overwrites
    out = seal(model, kek)
    kek.chmod(0o644)
    with pytest.raises(errors.ConfigError, match="0644"):
        SealedReader(out, kek)
    with pytest.raises(errors.ConfigError):
        seal_dir(model, tmp_path / "x", kek)
    kek.chmod(0o400)
    load_all(out, kek)


def test_source_rules(model: Path, kek: Path, tmp_path: Path) -> None:
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(errors.FormatError, match="pickle"):
        seal_dir(model, tmp_path / "o1", kek)
    (model / "pytorch_model.bin").unlink()
    (model / "bad.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(errors.FormatError, match="bad.safetensors"):
        seal_dir(model, tmp_path / "o2", kek)
    (model / "bad.safetensors").unlink()
    with pytest.raises(errors.InvalidArgument):
        seal_dir(model, tmp_path / "o3", kek, segment_size=1000)
    with pytest.raises(errors.InvalidArgument):
        seal_dir(model, tmp_path / "o4", kek, aead="aes-128-ctr")
    assert not any(p.name.startswith(("o", ".o")) for p in tmp_path.iterdir())


def test_malformed_header_is_format_error(model: Path, kek: Path) -> None:
    out = seal(model, kek)
    ctxh = out / "weights.ctxh"
    b = ctxh.read_bytes()
    n = int.from_bytes(b[12:20], "little")
    header = json.loads(b[20 : 20 + n])
    header["segment_size"] = 1000
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    ctxh.write_bytes(b[:12] + len(body).to_bytes(8, "little") + body + b[20 + n :])
    with pytest.raises(errors.FormatError, match="segment_size"):
        inspect(out)
    ctxh.write_bytes(b"NOTMAGIC" + b[8:])
    with pytest.raises(errors.FormatError, match="magic"):
        verify_ciphertext(out)
