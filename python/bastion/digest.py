"""Model-directory digests and BLAKE3 hashing: the public façade over the native core (``bastion.native``).

The directory digest is specified in ``docs/model-digest.md``. Errors are ``bastion.errors`` classes:
``NativeIOError`` (unreadable path), ``IntegrityError`` (symlink, special file, file changed while
hashed), ``FormatError`` (non-UTF-8 name), ``AlreadyFinalized`` (hasher reused).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bastion import native
from bastion.native import Blake3Hasher


@dataclass(frozen=True, slots=True)
class FileDigest:
    """One regular file: path relative to the model root ('/'-separated), size in bytes, digest."""

    path: str
    size: int
    digest: str


@dataclass(frozen=True, slots=True)
class DirDigest:
    """A whole model directory: ``digest`` is ``"blake3:<hex>"``; ``files`` are sorted by path."""

    digest: str
    files: tuple[FileDigest, ...]


def digest_dir(path: str | os.PathLike[str]) -> DirDigest:
    """Digest every regular file under ``path`` (symlinks and special files are refused).

    The GIL is released while files are read and hashed (in parallel).
    """
    digest, files = native.digest_dir(path)
    return DirDigest(digest, tuple(FileDigest(p, s, d) for p, s, d in files))


def hash_bytes(data: bytes) -> str:
    """BLAKE3 of ``data`` as 64 lowercase hex digits (same form as ``Blake3Hasher.finalize()``)."""
    h = Blake3Hasher()
    h.update(data)
    return h.finalize()


__all__ = ["Blake3Hasher", "DirDigest", "FileDigest", "digest_dir", "hash_bytes"]
