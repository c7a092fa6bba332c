"""bastion.files.atomic_write: whole or not at all, the requested mode, no temp file left, no symlink
followed, file and directory fsynced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bastion import files
from bastion.files import atomic_write, atomic_write_text


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_content_and_mode(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "a.json"
    old = os.umask(0o077)  # the mode asked for is the mode set, whatever the umask
    try:
        atomic_write(target, b"first", mode=mode)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"first"
    assert stat.S_IMODE(target.stat().st_mode) == mode
    atomic_write_text(target, "second ✓")
    assert target.read_text(encoding="utf-8") == "second ✓"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # the default
    assert leftovers(tmp_path) == []


def test_large_data_is_written_whole_through_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def short(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:1000]))  # the kernel may write less than asked

    monkeypatch.setattr(os, "write", short)
    data = os.urandom(10_000)
    atomic_write(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_failure_midway_leaves_the_target_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "store.json"
    target.write_bytes(b"old content")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, b"new content that never lands")
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert leftovers(tmp_path) == []


def test_temp_file_is_in_the_same_directory_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write(tmp_path / "x", b"1")
    ((src, dst),) = seen
    assert Path(src).parent == Path(dst).parent == tmp_path and Path(src).name.startswith(".x.")
    assert not Path(src).exists() and leftovers(tmp_path) == []


def test_refuses_a_symlink_planted_at_the_temp_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    target = tmp_path / "target"
    target.write_bytes(b"old")
    planted = tmp_path / ".target.guessed.tmp"
    planted.symlink_to(victim)
    monkeypatch.setattr(files, "_temp_name", lambda path: planted)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"attacker-visible?")
    assert victim.read_bytes() == b"not yours"
    assert target.read_bytes() == b"old"
    assert planted.is_symlink()  # someone else's file: neither followed nor removed


def test_dangling_symlink_at_the_temp_name_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planted = tmp_path / ".t.guessed.tmp"
    planted.symlink_to(tmp_path / "would-be-created")
    monkeypatch.setattr(files, "_temp_name", lambda path: planted)
    with pytest.raises(FileExistsError):
        atomic_write(tmp_path / "t", b"x")
    assert not (tmp_path / "would-be-created").exists()


def test_file_and_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        st = os.fstat(fd)
        synced.append("dir" if stat.S_ISDIR(st.st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    atomic_write(tmp_path / "f", b"data")
    assert synced == ["file", "dir"]  # the data before the rename, the rename after it


def test_no_overwrite_creates_once_and_never_replaces(tmp_path: Path) -> None:
    key = tmp_path / "secret.key"
    atomic_write(key, b"one", overwrite=False)
    assert key.read_bytes() == b"one" and stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        atomic_write(key, b"two", overwrite=False)
    assert key.read_bytes() == b"one"
    dangling = tmp_path / "link.key"
    dangling.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        atomic_write(dangling, b"three", overwrite=False)
    assert not (tmp_path / "elsewhere").exists()
    assert leftovers(tmp_path) == []


def test_replace_does_not_write_through_a_symlinked_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    target = tmp_path / "target"
    target.symlink_to(victim)
    atomic_write(target, b"new")
    assert victim.read_bytes() == b"keep"  # the link itself was replaced by a regular file
    assert not target.is_symlink() and target.read_bytes() == b"new"


def test_read_regular_refuses_what_is_not_a_plain_bounded_file(tmp_path: Path) -> None:
    """bastion.files.read_regular (issue 14, requirement 5): a symlink is not followed (ELOOP), a FIFO opens
    without blocking and is refused, a device is refused, a file over the bound is refused without being
    read; a regular file within it is read whole."""
    import errno

    from bastion.files import read_regular

    ok = tmp_path / "ok"
    ok.write_bytes(b"x" * 10)
    assert read_regular(ok, 10) == b"x" * 10
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    for path, code in ((fifo, errno.EINVAL), (Path("/dev/zero"), errno.EINVAL), (link, errno.ELOOP), (ok, errno.EFBIG)):
        with pytest.raises(OSError) as err:
            read_regular(path, 9)
        assert err.value.errno == code, path
