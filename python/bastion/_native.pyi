"""Type stubs for the Rust extension ``bastion._native`` (import it via ``bastion.digest``)."""

import os
from typing import Any
from typing import final

__all__ = [
    "Blake3Hasher",
    "SealedReader",
    "__version__",
    "create_kek",
    "digest_dir",
    "inspect",
    "rekey",
    "seal_dir",
    "verify_ciphertext",
]

__version__: str

def digest_dir(path: str | os.PathLike[str]) -> tuple[str, list[tuple[str, int, str]]]:
    """Return ``("blake3:<hex>", [(relpath, size, "blake3:<hex>"), ...])`` sorted by relpath.

    Raises bastion.errors.NativeIOError, IntegrityError or FormatError.
    """

@final
class Blake3Hasher:
    """Incremental BLAKE3; ``finalize()`` consumes it (then raises bastion.errors.AlreadyFinalized)."""

    def __new__(cls) -> Blake3Hasher: ...
    def update(self, data: bytes) -> None:
        """Absorb immutable ``bytes`` (read in place; the GIL is released for large inputs)."""

    def finalize(self) -> str:
        """The digest as 64 lowercase hex digits."""

# Sealed model format (import it via bastion.weights).

@final
class SealedReader:
    """A sealed model opened with a 0600/0400 KEK file (read by Rust) or a key-provider object."""

    def __new__(cls, path: str | os.PathLike[str], kek: str | os.PathLike[str] | Any) -> SealedReader: ...
    def header_file(self) -> bytes: ...
    def tensor_names(self) -> list[str]: ...
    def tensor_info(self, name: str) -> tuple[str, list[int], int, tuple[int, int]]: ...
    def files(self) -> list[tuple[str, str, int]]: ...
    def read_tensor(self, name: str) -> bytes: ...
    def read_range(self, file_index: int, begin: int, end: int) -> bytes: ...
    def verify_ciphertext(self) -> tuple[int, int, int]: ...
    def verify_all(self) -> tuple[int, int, int]: ...
    def close(self) -> None: ...

def seal_dir(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    kek: str | os.PathLike[str] | Any,
    *,
    aead: str = "aes-256-gcm",
    segment_size: int = 1048576,
    hash: str = "blake3",
    context: dict[str, str] | None = None,
    origin: dict[str, str] | None = None,
) -> tuple[int, int, int, list[str], str]: ...
def rekey(
    path: str | os.PathLike[str], old_kek: str | os.PathLike[str] | Any, new_kek: str | os.PathLike[str] | Any
) -> None: ...
def create_kek(path: str | os.PathLike[str]) -> None: ...
def inspect(path: str | os.PathLike[str]) -> str: ...
def verify_ciphertext(path: str | os.PathLike[str]) -> tuple[int, int, int]: ...
