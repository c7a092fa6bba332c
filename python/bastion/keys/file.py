"""The local ``file`` key provider: a 32-byte KEK file, mode 0600 or 0400, read only by the Rust core."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.keys.base import ENV_KEK_FILE, ENV_PROVIDER
from bastion.weights.sealed import SealedReader, SealReport, StrPath, create_kek, seal_dir

KEK_BYTES = 32
_ALLOWED_MODES = (0o600, 0o400)


class FileKeyProvider:
    name = "file"

    __slots__ = ("path",)

    def __init__(self, path: StrPath) -> None:
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"FileKeyProvider({str(self.path)!r})"

    def __fspath__(self) -> str:
        """The native core takes the KEK as a path and reads it itself (the key never reaches Python)."""
        return str(self.path)

    @classmethod
    def create(cls, path: StrPath) -> FileKeyProvider:
        """Writes a new random KEK (mode 0600; never overwrites an existing file)."""
        p = Path(path).expanduser()
        if p.exists() or p.is_symlink():
            raise ConfigError(f"key file already exists (never overwritten): {p}")
        if not p.parent.is_dir():
            raise ConfigError(f"key file directory does not exist: {p.parent}")
        create_kek(p)
        return cls(p)

    def describe(self) -> str:
        return f"file:{self.path.resolve()}"

    def check(self) -> None:
        """The same rules the Rust core applies, checked up front for a clear start-up error."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            raise ConfigError(f"key file not found: {self.path}") from None
        except OSError as exc:
            raise ConfigError(f"key file unreadable: {self.path} ({exc.strerror})") from None
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(f"key file is a symbolic link (refused): {self.path}")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"key file is not a regular file: {self.path}")
        mode = stat.S_IMODE(st.st_mode)
        if mode not in _ALLOWED_MODES:
            raise ConfigError(f"key file mode must be 0600 or 0400, not {mode:04o}: {self.path}")
        if st.st_size != KEK_BYTES:
            raise ConfigError(f"key file must hold exactly {KEK_BYTES} bytes: {self.path}")

    def open(self, sealed_dir: StrPath) -> SealedReader:
        return SealedReader(sealed_dir, self.path)

    def seal(self, src: StrPath, out: StrPath, **options: Any) -> SealReport:
        return seal_dir(src, out, self.path, **options)

    def worker_env(self) -> dict[str, str]:
        return {ENV_PROVIDER: self.name, ENV_KEK_FILE: str(self.path.resolve())}
