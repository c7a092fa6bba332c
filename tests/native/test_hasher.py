"""Binding contract of bastion.digest.Blake3Hasher / hash_bytes (BLAKE3 over bytes)."""

from __future__ import annotations

import threading

import pytest

from bastion import errors
from bastion.digest import Blake3Hasher, hash_bytes

# Official BLAKE3 test vectors (test_vectors.json): input is bytes(i % 251 for i in range(n)).
VECTORS = {
    0: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    1: "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
    1024: "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
    1025: "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
}


def vector_input(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


@pytest.mark.parametrize("n", sorted(VECTORS))
def test_known_vectors(n: int) -> None:
    assert hash_bytes(vector_input(n)) == VECTORS[n]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 1025, 65_536, 300_000])
def test_independent_of_chunking(chunk: int) -> None:
    data = vector_input(1025) * 700  # ~700 KiB: crosses the detach and parallel thresholds
    h = Blake3Hasher()
    for i in range(0, len(data), chunk):
        h.update(data[i : i + chunk])
    assert h.finalize() == hash_bytes(data)
    small = Blake3Hasher()
    small.update(vector_input(1024))
    small.update(b"\x00"[:0])
    assert small.finalize() == VECTORS[1024]


def test_large_single_update() -> None:
    data = vector_input(1025) * 4096  # ~4 MiB: update_rayon with the GIL released
    h = Blake3Hasher()
    h.update(data[:1024])
    h.update(data[1024:])
    assert h.finalize() == hash_bytes(data)


def test_finalize_twice_raises() -> None:
    h = Blake3Hasher()
    h.update(b"abc")
    assert h.finalize() == "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    with pytest.raises(errors.AlreadyFinalized) as info:
        h.finalize()
    assert type(info.value) is errors.AlreadyFinalized
    assert isinstance(info.value, errors.BastionError)
    with pytest.raises(errors.AlreadyFinalized):
        h.update(b"more")


@pytest.mark.parametrize("bad", [bytearray(b"x"), memoryview(b"x"), "x", 1, None])
def test_update_accepts_only_immutable_bytes(bad: object) -> None:
    with pytest.raises(TypeError):
        Blake3Hasher().update(bad)


def test_frozen_and_thread_safe() -> None:
    h = Blake3Hasher()
    with pytest.raises(AttributeError):
        h.x = 1
    chunk = vector_input(1025) * 100  # > 64 KiB: each update detaches
    threads = [threading.Thread(target=lambda: [h.update(chunk) for _ in range(8)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # All chunks are identical, so any interleaving of whole updates gives the same stream.
    assert h.finalize() == hash_bytes(chunk * 32)
