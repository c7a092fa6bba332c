"""File operations of the writer: append-only segment files, durable writes, the atomic witness file."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import ConfigError, IntegrityError
from bastion.files import atomic_write, fsync_dir

_SYNC = getattr(os, "fdatasync", os.fsync)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
#: The largest witness file read (it holds three short values).
_MAX_WITNESS = 4096


def open_segment(path: Path, expected_len: int) -> int:
    """Open (creating it 0600 if absent) a segment for appending; O_APPEND, no symlinks. A new file's
    directory entry is made durable. Refuses a file whose length is not ``expected_len``."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"audit segment {path}: not a regular file")
        if st.st_size != expected_len:
            raise IntegrityError(f"audit segment {path}: length differs from the recovered log (changed?)")
        if created:
            fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sync(fd: int) -> None:
    """Make the file's data (and its size) durable."""
    _SYNC(fd)


def write_all(fd: int, data: bytes | bytearray) -> None:
    """Write every byte (looping over short writes) and make them durable."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    _SYNC(fd)


@dataclass(frozen=True)
class Witness:
    """The latest checkpoint, kept outside the log so that truncating it back past that point is detected."""

    log_id: str
    seq: int
    hash: str

    def to_json(self) -> bytes:
        return json.dumps({"hash": self.hash, "log_id": self.log_id, "seq": self.seq}, sort_keys=True).encode() + b"\n"


def write_witness(path: Path, w: Witness) -> None:
    """Replace ``path`` atomically (``bastion.files.atomic_write``, mode 0600)."""
    atomic_write(path, w.to_json(), mode=0o600)


def read_witness(path: Path) -> Witness:
    """Parse a witness file; a malformed one is a ConfigError naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(_MAX_WITNESS + 1)
    except OSError as exc:
        raise ConfigError(f"witness file {path}: {exc.strerror}") from None
    try:
        if len(raw) > _MAX_WITNESS:
            raise ValueError
        d = json.loads(raw)
        w = Witness(log_id=d["log_id"], seq=d["seq"], hash=d["hash"])
        if not (isinstance(w.log_id, str) and isinstance(w.hash, str) and type(w.seq) is int and w.seq >= 0):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"witness file {path}: expected JSON {{log_id, seq, hash}}") from None
    return w
