"""Model-directory digests and BLAKE3 hashing: the public façade over the native core (``bastion.native``).

The directory digest is specified in ``docs/model-digest.md``. Errors are ``bastion.errors`` classes:
``NativeIOError`` (unreadable path), ``IntegrityError`` (symlink, special file, file changed while
hashed), ``FormatError`` (non-UTF-8 name), ``AlreadyFinalized`` (hasher reused).

``read_file_checked`` is the one way Python code reads an artefact file it verifies (a signed manifest's
files, the verified copy of ``bastion.models.verified``): one descriptor opened with ``O_NOFOLLOW``, every
byte consumed from it, and the file refused if it changed meanwhile, the same rule the native
``digest_dir`` applies.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from bastion import native
from bastion.errors import IntegrityError, NativeIOError
from bastion.files import open_regular
from bastion.native import Blake3Hasher

CHUNK = 1 << 20


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


def read_file_checked(path: str | os.PathLike[str], consume: Callable[[bytes], None]) -> int:
    """Reads the regular file ``path`` once, from one descriptor, handing every chunk to ``consume``; returns
    the number of bytes read.

    Opened with ``O_NOFOLLOW`` (``bastion.files.open_regular``): a symlink, a FIFO or a device is refused
    (``IntegrityError``), and a missing file too. Its size and modification time are taken with ``fstat``
    of that descriptor, never with a second lookup of the path; if the bytes read differ from that size, or
    the descriptor's size or modification time after the read differ from before, the file changed while
    it was read: ``IntegrityError`` naming it. Other I/O errors are ``NativeIOError``.
    """
    p = os.fspath(path)
    try:
        fd = open_regular(p)
    except FileNotFoundError:
        raise IntegrityError(f"{p}: missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntegrityError(f"{p}: symbolic links are refused") from None
        if exc.errno == errno.EINVAL:
            raise IntegrityError(f"{p}: not a regular file") from None
        raise NativeIOError(f"{p}: {exc.strerror}") from None
    try:
        before = os.fstat(fd)
        total = 0
        while total <= before.st_size:  # one read past the size shows a file that grew
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            consume(chunk)
            total += len(chunk)
        after = os.fstat(fd)
    except OSError as exc:
        raise NativeIOError(f"{p}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if total != before.st_size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise IntegrityError(f"file changed while it was being hashed: {p}")
    return total


def hash_file(path: str | os.PathLike[str]) -> FileDigest:
    """BLAKE3 of the regular file ``path``, read as ``read_file_checked`` reads (``FileDigest.path`` is
    ``path`` as given)."""
    h = Blake3Hasher()
    size = read_file_checked(path, h.update)
    return FileDigest(os.fspath(path), size, "blake3:" + h.finalize())


def hash_bytes(data: bytes) -> str:
    """BLAKE3 of ``data`` as 64 lowercase hex digits (same form as ``Blake3Hasher.finalize()``)."""
    h = Blake3Hasher()
    h.update(data)
    return h.finalize()


__all__ = [
    "CHUNK",
    "Blake3Hasher",
    "DirDigest",
    "FileDigest",
    "digest_dir",
    "hash_bytes",
    "hash_file",
    "read_file_checked",
]
