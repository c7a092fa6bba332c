"""The cluster token file (``bastion cluster token``): 256 random bits as 64 hex digits, the form Ray's own
generator uses, written with mode 0600 whatever the umask (Ray's ``ray get-auth-token --generate`` writes
``~/.ray/auth_token`` through the umask, usually 0644). The token is never printed."""

from __future__ import annotations

import secrets
from pathlib import Path

from bastion.errors import ConfigError
from bastion.files import atomic_write


def write_token(path: Path, *, rotate: bool = False) -> Path:
    """A new token in ``path`` (0600). Without ``rotate`` an existing file is never replaced; with it the
    file is replaced atomically (readers see the old token or the new one, never a mix)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cluster token: the directory {parent} does not exist")
    if (path.exists() or path.is_symlink()) and not rotate:
        raise ConfigError(f"cluster token: {path} already exists (--rotate replaces it)")
    if path.is_symlink():
        raise ConfigError(f"cluster token: {path} is a symbolic link; refused")
    token = secrets.token_hex(32)
    try:
        atomic_write(path, (token + "\n").encode("ascii"), mode=0o600, overwrite=rotate)
    except FileExistsError:
        raise ConfigError(f"cluster token: {path} already exists (--rotate replaces it)") from None
    return path
