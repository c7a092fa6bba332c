"""Model-directory digests and BLAKE3 hashing: the public façade over ``bastion._native``.

The directory digest is specified in ``docs/model-digest.md``. Errors are ``bastion.errors`` classes:
``NativeIOError`` (unreadable path), ``IntegrityError`` (symlink, special file, file changed while
hashed), ``FormatError`` (non-UTF-8 name), ``AlreadyFinalized`` (hasher reused).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import bastion

try:
    from bastion import _native
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "bastion's Rust extension (bastion._native) is not built or failed to load; "
        "build it with `maturin develop --release`"
    ) from exc


def _check_version(native_version: str) -> None:
    if native_version != bastion.__version__:
        raise ImportError(
            f"stale bastion._native extension: built for {native_version!r} but the package is "
            f"{bastion.__version__!r}; rebuild it with `maturin develop --release`"
        )


_check_version(getattr(_native, "__version__", "<unknown>"))

Blake3Hasher = _native.Blake3Hasher


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
    digest, files = _native.digest_dir(path)
    return DirDigest(digest, tuple(FileDigest(p, s, d) for p, s, d in files))


def hash_bytes(data: bytes) -> str:
    """BLAKE3 of ``data`` as 64 lowercase hex digits (same form as ``Blake3Hasher.finalize()``)."""
    h = _native.Blake3Hasher()
    h.update(data)
    return h.finalize()


def native_version() -> str:
    """The version the loaded extension was built as (equal to ``bastion.__version__``)."""
    return str(_native.__version__)


__all__ = ["Blake3Hasher", "DirDigest", "FileDigest", "digest_dir", "hash_bytes", "native_version"]
