"""Reading a provider credential (a token, a PIN) from a file or the environment: never argv, never logs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bastion.errors import ConfigError

MAX_SECRET_BYTES = 4096


def read_secret(what: str, file: Path | None, env_names: tuple[str, ...]) -> str:
    """The credential from ``file`` (a regular file, mode 0600 or 0400, not a symlink) or else the first
    of ``env_names`` that is set. Errors name the file or variable, never the value."""
    if file is not None:
        try:
            st = os.lstat(file)
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {file} ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what}: {file} is not a regular file (symbolic links are refused)")
        if stat.S_IMODE(st.st_mode) not in (0o600, 0o400):
            raise ConfigError(f"{what}: {file} must have mode 0600 or 0400, not {stat.S_IMODE(st.st_mode):04o}")
        if st.st_size > MAX_SECRET_BYTES:
            raise ConfigError(f"{what}: {file} is larger than {MAX_SECRET_BYTES} bytes")
        value = file.read_text().strip()
        if not value:
            raise ConfigError(f"{what}: {file} is empty")
        return value
    for name in env_names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise ConfigError(f"{what}: no credential (set a file, or one of {', '.join(env_names)})")
