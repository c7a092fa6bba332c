"""Binding contract of bastion.digest.digest_dir (spec: docs/model-digest.md)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import bastion
from bastion import errors
from bastion.digest import DirDigest, FileDigest, digest_dir, hash_bytes

EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def write(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def encode(files: list[tuple[str, bytes]]) -> bytes:
    """The v1 encoding, written independently of the Rust code."""
    out = b"bastion.model-dir-digest.v1"
    for path, data in sorted(files, key=lambda f: f[0].encode()):
        p = path.encode()
        out += struct.pack("<Q", len(p)) + p + struct.pack("<Q", len(data))
        out += bytes.fromhex(hash_bytes(data))
    return out


def test_matches_spec_and_single_file_digests(tmp_path: Path) -> None:
    files = [("config.json", b"{}"), ("empty", b""), ("w/a.safetensors", os.urandom(300_000)), ("w.txt", b"x")]
    for rel, data in files:
        write(tmp_path, rel, data)
    d = digest_dir(tmp_path)
    assert isinstance(d, DirDigest)
    assert [f.path for f in d.files] == ["config.json", "empty", "w.txt", "w/a.safetensors"]
    assert d.files[1] == FileDigest("empty", 0, f"blake3:{EMPTY}")
    for f in d.files:
        assert f.digest == "blake3:" + hash_bytes(dict(files)[f.path])
        assert f.size == len(dict(files)[f.path])
    assert d.digest == "blake3:" + hash_bytes(encode(files))
    assert digest_dir(str(tmp_path)) == d  # str and PathLike alike
    with pytest.raises(AttributeError):
        d.digest = "x"


def test_large_file_independent_of_read_size(tmp_path: Path) -> None:
    data = os.urandom(1 << 20) * 9 + b"tail"  # > 8 MiB: the double-buffered, multi-threaded path
    write(tmp_path, "big.bin", data)
    d = digest_dir(tmp_path)
    assert d.files[0].digest == "blake3:" + hash_bytes(data)


def test_any_change_changes_digest(tmp_path: Path) -> None:
    write(tmp_path, "a/model.bin", b"\x01" * 5000)
    write(tmp_path, "config.json", b"{}")
    seen = {digest_dir(tmp_path).digest}
    write(tmp_path, "a/model.bin", b"\x01" * 4999 + b"\x00")
    seen.add(digest_dir(tmp_path).digest)
    (tmp_path / "config.json").rename(tmp_path / "config2.json")
    seen.add(digest_dir(tmp_path).digest)
    write(tmp_path, "added", b"")
    seen.add(digest_dir(tmp_path).digest)
    assert len(seen) == 4


def test_symlink_refused(tmp_path: Path) -> None:
    write(tmp_path, "real", b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(errors.IntegrityError) as info:
        digest_dir(tmp_path)
    assert type(info.value) is errors.IntegrityError
    assert "link" in str(info.value.detail)
    assert str(tmp_path) not in info.value.public_message


def test_special_file_refused(tmp_path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(tmp_path / "sock"))
        with pytest.raises(errors.IntegrityError, match="sock"):
            digest_dir(tmp_path)
    finally:
        s.close()


def test_io_error_names_path(tmp_path: Path) -> None:
    with pytest.raises(errors.NativeIOError) as info:
        digest_dir(tmp_path / "missing")
    assert "missing" in str(info.value)
    assert info.value.public_message == errors.NativeIOError.public_default


def test_non_utf8_name_refused(tmp_path: Path) -> None:
    try:
        with open(os.fsencode(tmp_path) + b"/bad\xff", "wb"):
            pass
    except OSError:
        pytest.skip("filesystem refuses non-UTF-8 names")
    with pytest.raises(errors.FormatError):
        digest_dir(tmp_path)


def test_gil_released_while_hashing(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.write(os.urandom(1 << 20))
        fh.truncate(200 << 20)  # sparse tail: 200 MiB to read and hash
    count = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal count
        while not stop.is_set():
            count += 1
            if count % 1000 == 0:
                time.sleep(0)  # hand the GIL straight back once the main thread wants it

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.01)
        before = count
        started = time.perf_counter()
        digest_dir(tmp_path)
        elapsed = time.perf_counter() - started
        advanced = count - before
    finally:
        stop.set()
        t.join()
    # Holding the GIL would allow at most a switch-interval's worth (~1000) of increments.
    assert advanced > 50_000, f"counter advanced {advanced} in {elapsed:.3f}s"


def test_stale_extension_refused() -> None:
    code = (
        "import bastion._native as n; n.__version__ = '0.0.0-stale'\n"
        "try:\n    import bastion.digest\nexcept ImportError as e:\n    print('REFUSED', e)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(bastion.__file__).parent.parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.startswith("REFUSED"), out.stdout + out.stderr
    assert "0.0.0-stale" in out.stdout and bastion.__version__ in out.stdout and "make setup" in out.stdout


def test_the_extension_shadows_its_stand_in() -> None:
    # python/bastion/_native.py exists only for import-linter; the compiled module must be what loads.
    from bastion import _native
    from bastion.native import check_version

    assert str(_native.__file__).endswith(".so"), _native.__file__
    with pytest.raises(ImportError, match=r"built for version '0\.0\.9' but the bastion package is version '0\.1\.0'"):
        check_version("0.0.9", "0.1.0")


def test_versions_match_and_import_is_lazy() -> None:
    from bastion import _native
    from bastion.native import native_version

    assert _native.__version__ == bastion.__version__ == native_version() == "0.1.0"
    code = "import sys, bastion; print('bastion._native' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
