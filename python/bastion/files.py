"""Files written whole: the one atomic-write helper of bastion.

``atomic_write(path, data, mode=...)`` leaves ``path`` holding either its old content or all of ``data``,
never a mix, and durably so: a temporary file is created in the same directory with ``O_CREAT|O_EXCL|
O_NOFOLLOW|O_CLOEXEC`` and the requested mode (a planted file or symlink at its name is refused, never
followed or reused), written fully and fsynced, renamed onto ``path`` (``os.replace``), then the directory
is fsynced so the rename survives a crash. On any failure before the rename the temporary file is removed
and ``path`` is untouched. With ``overwrite=False`` the file is published with ``link`` instead of
``replace``: an existing ``path`` (even a dangling symlink) raises ``FileExistsError`` and stays as it is,
so a secret created once is never replaced and never seen half-written.

Errors are the ``OSError`` of the failing call. This module imports nothing of bastion.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

StrPath = str | os.PathLike[str]


def fsync_dir(path: StrPath) -> None:
    """Make the directory's entries (a create, rename or link just done in it) durable."""
    fd = os.open(path, _DIR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    """A fresh, unpredictable name beside ``path`` (dot-prefixed; ``.<name>.<random>.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def _write_fully(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(
    path: StrPath, data: bytes | bytearray | memoryview, *, mode: int = 0o600, overwrite: bool = True
) -> None:
    """Replace (or, with ``overwrite=False``, create) ``path`` with ``data``, atomically and durably.

    The file gets exactly ``mode`` (the umask does not narrow it; it is never wider while written).
    """
    target = Path(path)
    tmp = _temp_name(target)
    fd = os.open(tmp, _CREATE, mode & 0o7777)
    published = False
    try:
        try:
            os.fchmod(fd, mode & 0o7777)
            _write_fully(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)
            published = True
        else:
            os.link(tmp, target, follow_symlinks=False)
    finally:
        if not published:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    fsync_dir(target.parent)


def atomic_write_text(
    path: StrPath, text: str, *, mode: int = 0o600, overwrite: bool = True, encoding: str = "utf-8"
) -> None:
    """``atomic_write`` of ``text`` encoded (UTF-8 by default)."""
    atomic_write(path, text.encode(encoding), mode=mode, overwrite=overwrite)


__all__ = ["atomic_write", "atomic_write_text", "fsync_dir"]
