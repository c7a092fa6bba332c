"""The audit keys: creating them (``bastion audit keygen``, first start) and loading them for the writer.

Secret key bytes are read by Rust and never reach Python. See ``settings.py`` for the defaults.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bastion.audit.settings import CONTENT_KEY_NAME, PUBLIC_KEY_NAME, SIGNING_KEY_NAME, AuditSettings
from bastion.errors import ConfigError
from bastion.native import AuditContentKey, AuditPublicKey, AuditSigningKey, audit_keygen


@dataclass(frozen=True)
class AuditKeys:
    signing: AuditSigningKey
    content: AuditContentKey
    key_id: str


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if absent; refuse a symlink, a non-directory or group/world access."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"audit directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"audit directory {path}: not a directory (symlinks are refused)")
    if st.st_mode & 0o077:
        raise ConfigError(f"audit directory {path}: mode {st.st_mode & 0o777:04o}; must be 0700")
    return path


def keygen(directory: Path) -> tuple[str, Path, Path, Path]:
    """Create ``signing.pk8``, ``signing.pub`` and ``content.key`` in ``directory`` (0700; never overwrites)."""
    private_dir(directory)
    paths = (directory / SIGNING_KEY_NAME, directory / PUBLIC_KEY_NAME, directory / CONTENT_KEY_NAME)
    for p in paths:
        if p.exists() or p.is_symlink():
            raise ConfigError(f"{p} already exists; keygen never overwrites keys")
    key_id = audit_keygen(*paths)
    return key_id, *paths


def load_keys(settings: AuditSettings, log_dir: Path) -> AuditKeys:
    """The writer's keys. With no key configured and none present, a new set is generated in
    ``<log_dir>/keys``; otherwise every key file must exist, and the public key must match the signing key."""
    signing, public, content = settings.key_paths(log_dir)
    if not settings.keys_configured() and not any(p.exists() or p.is_symlink() for p in (signing, public, content)):
        keygen(log_dir / "keys")
    for field, p in (("signing_key_file", signing), ("public_key_file", public), ("content_key_file", content)):
        if not p.exists():
            raise ConfigError(f"audit.{field}: {p} does not exist (create keys with `bastion audit keygen`)")
    sk = AuditSigningKey.from_file(signing)
    if AuditPublicKey.from_file(public).key_id != sk.key_id:
        raise ConfigError(f"audit.public_key_file: {public} is not the public key of {signing}")
    return AuditKeys(signing=sk, content=AuditContentKey.from_file(content), key_id=sk.key_id)
