"""A small tmpfs for disk-full tests: mounted for the test, filled and freed on demand.

Mounting needs root (CI runs as root). Elsewhere the tests that use it are skipped with that reason, except
under CI (``CI`` set), where not being able to mount is a failure.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_fs(mount_point: Path, size_bytes: int) -> Iterator[Path]:
    mount_point.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(mount_point)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False) if os.geteuid() == 0 else None
    if done is None or done.returncode != 0:
        why = "needs root to mount a tmpfs" if done is None else f"mount failed: {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path, leave: int = 0, name: str = "filler") -> Path:
    """Write a file into ``directory`` until at most ``leave`` bytes are free (0: until ENOSPC)."""
    path = directory / name
    with path.open("ab") as f:
        for chunk in (1 << 16, 1 << 12, 1 << 9):
            while True:
                st = os.statvfs(directory)
                if st.f_bavail * st.f_frsize - chunk < leave:
                    break
                try:
                    f.write(b"\0" * chunk)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return path


def free(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
