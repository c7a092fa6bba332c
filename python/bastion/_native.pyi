"""Type stubs for the Rust extension ``bastion._native`` (import it via ``bastion.digest``)."""

import os
from typing import final

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
