"""Files written whole: the one atomic-write helper of bastion; and files read whole, with a bound.

``atomic_write(path, data, mode=...)`` leaves ``path`` holding either its old content or all of ``data``,
never a mix, and durably so: a temporary file is created in the same directory with ``O_CREAT|O_EXCL|
O_NOFOLLOW|O_CLOEXEC`` and the requested mode (a planted file or symlink at its name is refused, never
followed or reused), written fully and fsynced, renamed onto ``path`` (``os.replace``), then the directory
is fsynced so the rename survives a crash. On any failure before the rename the temporary file is removed
and ``path`` is untouched. With ``overwrite=False`` the file is published with ``link`` instead of
``replace``: an existing ``path`` (even a dangling symlink) raises ``FileExistsError`` and stays as it is,
so a secret created once is never replaced and never seen half-written.

``read_regular(path, max_bytes)`` reads a file that others may have planted (an attestation, a policy):
opened with ``O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC`` (a symlink is refused, a FIFO or a device opens
without blocking), then it must be a regular file (``fstat`` of the open descriptor, so nothing can be
swapped in between) of at most ``max_bytes``, and at most ``max_bytes + 1`` bytes are ever read (a file
that grows meanwhile is refused too). ``open_regular`` is its first half, for readers that stream.

``exclusive_lock(path)`` holds an exclusive ``flock`` on ``<path>.lock`` (created 0600 beside ``path``,
never through a symlink) for a read-modify-write of ``path`` by cooperating processes (the CLI's writers of
the API key store and the tenancy policy); readers need no lock, since every write is an ``atomic_write``.

Errors are the ``OSError`` of the failing call (``ELOOP`` for a symlink; ``EINVAL`` "not a regular file",
``EFBIG`` "larger than N bytes"). This module imports nothing of bastion.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LOCK = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC

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


def open_regular(path: StrPath) -> int:
    """A read-only descriptor of ``path``, which must be a regular file and not a symlink (see the module)."""
    fd = os.open(path, _READ)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: StrPath, max_bytes: int) -> bytes:
    """The whole content of the regular file ``path``, at most ``max_bytes`` of it (see the module)."""
    fd = open_regular(path)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", os.fspath(path))
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", os.fspath(path))
    return b"".join(chunks)


@contextlib.contextmanager
def exclusive_lock(path: StrPath) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``<path>.lock`` (0600, beside ``path``) while the block runs; blocks
    until other holders are done. The lock file stays (removing it would let two writers lock two files)."""
    target = Path(path)
    fd = os.open(target.with_name(target.name + ".lock"), _LOCK, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


__all__ = ["atomic_write", "atomic_write_text", "exclusive_lock", "fsync_dir", "open_regular", "read_regular"]


def file_stamps(paths: Iterable[Path]) -> tuple[tuple[int, int, int], ...]:
    """(inode, size, mtime ns) per path, (0, 0, 0) when unreadable: what reloaders compare to see a change."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)
