"""The verified copy: the only model and adapter bytes vLLM's front end and its LoRA loader ever read.

vLLM reads a model's ``config.json``, generation config, tokenizer files and chat template in the server
process (its front end) when the engine starts, and loads a LoRA adapter from its directory when a request
first uses it. Verifying the original directory and then handing vLLM its path leaves a window: a chat
template swapped in after the check and restored afterwards would serve unsigned. So before the engine
starts, every file vLLM may read except the sealed weights is copied into a private directory, each file
read once from one descriptor (``bastion.digest.read_file_checked``: no symlink, refused if it changes
while read) and hashed *while it is copied*; the copy stands only if its bytes match

* the signed manifest (``model.sig``) that was verified, for a signed sealed model (every range of it),
* the per-file BLAKE3 digests behind the directory digest the server reports (``ListModels``, the
  release gate, the audit), for every model and adapter.

vLLM is then given only the copy's paths (``model``, ``tokenizer``, each ``LoRARequest``). The sealed
weights (``weights.ctxh``, ``*.ctxd``) are not copied: the ``bastion`` load format reads them from the
sealed directory named in the engine-process contract and must find the header and OMS digest the server
attested (``bastion.engine.process.SealedLoad``); every data byte is bound to that header by its segment
table. A plain (unsealed, development-only) model is copied whole, weights included, since vLLM's default
loader reads them from the model path.

Layout (``<cache_dir>/verified``, mode 0700)::

    <name>-<digest 16 hex>.<slot>/          0700, rebuilt on every start, removed at shutdown
        model/...                           files 0400
        adapters/<adapter>/...
    <name>-<digest 16 hex>.<slot>.lock      flock held while the engine runs

The path is the same on every start of the same model (vLLM keys its torch.compile cache on the model
path); a second server serving the same model from the same cache takes the next free slot. A directory
whose lock nobody holds is a leftover of a crash or a kill and is removed by the next ``stage``. The copy is
built under a temporary name and renamed into place once every file matched, so a path that exists holds
only verified bytes; nothing else writes there (0700, the server's own user).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bastion.digest import Blake3Hasher, DirDigest, FileDigest, digest_dir, read_file_checked
from bastion.errors import ConfigError, IntegrityError
from bastion.models.default import PreparedModel
from bastion.weights.signing import (
    DATA_SUFFIX,
    HEADER_FILE,
    IGNORED,
    IGNORED_DIRS,
    SIGNATURE_FILE,
    Entry,
    FileCheck,
    SignedManifest,
)

log = logging.getLogger(__name__)

VERIFIED_DIR = "verified"
MAX_SLOTS = 32
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class VerifiedCopy:
    """A private copy in use by one engine: ``model`` is what vLLM is given as its model and tokenizer,
    ``adapters`` each adapter's copy, ``adapter_digests`` the digests they were checked against."""

    root: Path
    model: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    adapter_digests: dict[str, str] = field(default_factory=dict)
    _lock_fd: int | None = None

    def close(self) -> None:
        """Removes the copy and releases its slot (idempotent). Call once the engine has stopped."""
        if self._lock_fd is None:
            return
        shutil.rmtree(self.root, ignore_errors=True)
        os.close(self._lock_fd)
        self._lock_fd = None


def _write_fully(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def copy_checked(src: Path, dst: Path, expected: FileDigest, entries: tuple[Entry, ...] | None = None) -> None:
    """Copies ``src`` to the new file ``dst`` (0400), hashing the bytes as they are copied: they must be the
    ones ``expected`` names (size and BLAKE3) and, given ``entries``, the ones the signed manifest names.
    Refused with ``IntegrityError`` naming ``src`` (``dst`` is then left for the caller's cleanup)."""
    blake = Blake3Hasher()
    check = FileCheck(src, entries) if entries is not None else None
    fd = os.open(dst, _CREATE, 0o600)
    try:

        def consume(chunk: bytes) -> None:
            blake.update(chunk)
            if check is not None:
                check.update(chunk)
            _write_fully(fd, chunk)

        total = read_file_checked(src, consume)
        if check is not None:
            check.finish(total)
        found = "blake3:" + blake.finalize()
        if (total, found) != (expected.size, expected.digest):
            raise IntegrityError(
                f"{src}: not the file that was digested (expected {expected.digest}, {expected.size} bytes; "
                f"copied {found}, {total} bytes)"
            )
        os.fchmod(fd, 0o400)
    finally:
        os.close(fd)


def _ignored(rel: str) -> bool:
    return rel in IGNORED or ("/" in rel and rel.split("/", 1)[0] in IGNORED_DIRS)


def _sealed_weight(rel: str) -> bool:
    return rel in (HEADER_FILE, SIGNATURE_FILE) or ("/" not in rel and rel.endswith(DATA_SUFFIX))


def model_files(prepared: PreparedModel) -> list[tuple[FileDigest, tuple[Entry, ...] | None]]:
    """What the copy of ``prepared`` holds, each file with what it must match: every file of its digest
    but the sealed weights, the signature and the paths the signer ignores (``.git``); for a signed model,
    exactly the files its manifest signs (an unsigned extra or a signed file missing is refused)."""
    if not prepared.files:
        raise IntegrityError(f"{prepared.path}: no per-file digests to check a copy against")
    sealed = prepared.sealed
    chosen = [f for f in prepared.files if not _ignored(f.path) and not (sealed and _sealed_weight(f.path))]
    manifest: SignedManifest | None = prepared.manifest
    if manifest is None:
        return [(f, None) for f in chosen]
    signed = {n for n in manifest.files() if not _sealed_weight(n)}
    present = {f.path for f in chosen}
    extra, missing = sorted(present - signed), sorted(signed - present)
    if extra:
        raise IntegrityError(f"{prepared.path / extra[0]}: not covered by {SIGNATURE_FILE} (unsigned file)")
    if missing:
        raise IntegrityError(f"{prepared.path / missing[0]}: signed in {SIGNATURE_FILE} but missing")
    return [(f, manifest.entries[f.path]) for f in chosen]


def copy_tree(src: Path, dst: Path, files: Iterable[tuple[FileDigest, tuple[Entry, ...] | None]]) -> tuple[int, int]:
    """Copies ``files`` (paths relative to ``src``) into the new directory ``dst`` with ``copy_checked``;
    returns (files, bytes)."""
    dst.mkdir(mode=0o700)
    count = size = 0
    for f, entries in files:
        rel = Path(f.path)
        if rel.is_absolute() or ".." in rel.parts:
            raise IntegrityError(f"{src}: unexpected path {f.path!r} in its digest")
        target = dst / rel
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        copy_checked(src / rel, target, f, entries)
        count, size = count + 1, size + f.size
    return count, size


def _private_base(cache_dir: Path) -> Path:
    base = cache_dir / VERIFIED_DIR
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if base.is_symlink() or not base.is_dir():
        raise ConfigError(f"{base}: must be a directory of bastion's own, not a symbolic link")
    os.chmod(base, 0o700)
    return base


def _sweep(base: Path) -> None:
    """Removes the copies no running server holds (left by a crash or a kill). Lock files stay: deleting
    one could let two servers lock two files of the same name."""
    for lock in base.glob("*.lock"):
        try:
            fd = os.open(lock, _LOCK, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            root = lock.with_suffix("")
            shutil.rmtree(root, ignore_errors=True)
            for stale in base.glob(f".{root.name}.*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        finally:
            os.close(fd)


def _claim(base: Path, key: str) -> tuple[Path, int]:
    """The first slot of ``key`` no running server holds: its directory path and the held lock's fd."""
    for slot in range(MAX_SLOTS):
        fd = os.open(base / f"{key}.{slot}.lock", _LOCK, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue
            raise
        return base / f"{key}.{slot}", fd
    raise ConfigError(f"{base}: {MAX_SLOTS} servers already run {key} from this cache directory")


def stage(cache_dir: Path, prepared: PreparedModel, adapters: Mapping[str, Path] | None = None) -> VerifiedCopy:
    """Builds the verified copy of ``prepared`` and of each adapter (name -> directory); see the module.

    An adapter's digest is taken here (``digest_dir``: every file from one descriptor, refused if it
    changes while read) and each of its files must match it as it is copied, so the digest reported for
    the adapter names the bytes vLLM will load, whenever it loads them."""
    base = _private_base(cache_dir)
    _sweep(base)
    key = f"{prepared.name}-{prepared.digest.split(':', 1)[-1][:16]}"
    root, lock_fd = _claim(base, key)
    copy = VerifiedCopy(root, root / "model", _lock_fd=lock_fd)
    tmp: Path | None = None
    try:
        # Leftovers of a crashed server that held this slot (swept above unless it was just released).
        shutil.rmtree(root, ignore_errors=True)
        for stale in base.glob(f".{root.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=base))
        count, size = copy_tree(prepared.path, tmp / "model", model_files(prepared))
        if adapters:
            (tmp / "adapters").mkdir(mode=0o700)
        for name, src in sorted((adapters or {}).items()):
            listing: DirDigest = digest_dir(src)
            copy_tree(src, tmp / "adapters" / name, ((f, None) for f in listing.files))
            copy.adapters[name] = root / "adapters" / name
            copy.adapter_digests[name] = listing.digest
        os.rename(tmp, root)
        tmp = None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        copy.close()
        raise
    log.info(
        "verified copy for vLLM: %s (%d model files, %.1f MiB%s), checked against %s%s",
        copy.model,
        count,
        size / 2**20,
        f", adapters {', '.join(sorted(copy.adapters))}" if copy.adapters else "",
        prepared.digest,
        f" and {SIGNATURE_FILE} ({prepared.oms_digest})" if prepared.manifest is not None else "",
    )
    return copy
