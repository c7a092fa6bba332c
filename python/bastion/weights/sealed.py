"""The sealed model format: the public façade over the native core (``bastion.native``; spec: docs/sealed-format.md).

Keys never reach Python: the KEK is a file path that Rust reads itself (mode 0600 or 0400 only), and
the data-encryption key stays inside the native reader. Errors are ``bastion.errors`` classes:
``IntegrityError`` (tampered, truncated, reordered or spliced data, wrong KEK, key commitment or hash
mismatch; the detail names the file and segment), ``FormatError`` (malformed header, refused source
file such as a pickle), ``ConfigError`` (KEK file permissions or size), ``NativeIOError``,
``InvalidArgument`` (bad option or range), ``AlreadyFinalized`` (reader used after ``close()``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bastion import native

if TYPE_CHECKING:
    from typing_extensions import Buffer

StrPath = str | os.PathLike[str]


@runtime_checkable
class KekWrapper(Protocol):
    """A key-encryption key held by a KMS or HSM (``bastion.keys``), as the native core calls it.

    A KEK given as a path is read by Rust itself and never reaches Python; a wrapper object has to see
    the data key to hand it to its service: ``wrap`` gets it in a ``bytearray`` that is zeroed when the
    call returns, and ``unwrap`` returns a ``bytearray`` that Rust copies and zeroes.
    """

    name: str

    def key_id(self) -> str: ...

    def wrap(self, dek: bytearray, aad: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytearray | None: ...


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of the sealed index; ``data_offsets`` are in the plaintext of data file ``file``."""

    dtype: str
    shape: tuple[int, ...]
    file: int
    data_offsets: tuple[int, int]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    files: int
    segments: int
    bytes: int


@dataclass(frozen=True, slots=True)
class SealReport:
    files: int
    tensors: int
    bytes: int
    copied: tuple[str, ...]
    header_digest: str


class SealedReader:
    """A sealed model opened with a local KEK file. Thread-safe; reads release the GIL.

    Every byte returned was hash-checked against the header's table and authenticated by the AEAD
    before it left Rust.
    """

    __slots__ = ("_r",)

    def __init__(self, path: StrPath, kek: StrPath | KekWrapper) -> None:
        self._r = native.SealedReader(path, kek)

    def header_file(self) -> bytes:
        """The exact bytes of ``weights.ctxh`` this reader decoded (checked against the signature)."""
        return self._r.header_file()

    def tensor_names(self) -> list[str]:
        return self._r.tensor_names()

    def tensor_info(self, name: str) -> TensorInfo:
        dtype, shape, file, (b, e) = self._r.tensor_info(name)
        return TensorInfo(dtype, tuple(shape), file, (b, e))

    def files(self) -> list[tuple[str, str, int]]:
        """``[(data file, source safetensors name, plaintext length), ...]``."""
        return self._r.files()

    def read_tensor(self, name: str) -> bytes:
        return self._r.read_tensor(name)

    def read_range(self, file_index: int, begin: int, end: int) -> bytes:
        return self._r.read_range(file_index, begin, end)

    def read_range_into(self, file_index: int, begin: int, out: Buffer) -> None:
        """Plaintext ``[begin, begin + len(out))`` of data file ``file_index`` decrypted into ``out`` (a writable,
        C-contiguous byte buffer the caller owns and reuses; GIL released). Its bytes mean something only once
        the call returned; on failure they are zeroed."""
        self._r.read_range_into(file_index, begin, out)

    def verify_ciphertext(self) -> VerifyReport:
        return VerifyReport(*self._r.verify_ciphertext())

    def verify_all(self) -> VerifyReport:
        return VerifyReport(*self._r.verify_all())

    def close(self) -> None:
        self._r.close()

    def __enter__(self) -> SealedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_PREFIX = 8 + 4 + 8  # magic, u32 version, u64 JSON length (docs/sealed-format.md)


def header_json(header_file: bytes) -> dict[str, Any]:
    """The JSON header inside ``weights.ctxh`` bytes the Rust reader already validated."""
    n = int.from_bytes(header_file[12:_PREFIX], "little")
    result: dict[str, Any] = json.loads(header_file[_PREFIX : _PREFIX + n])
    return result


def seal_dir(
    src: StrPath,
    out: StrPath,
    kek: StrPath | KekWrapper,
    *,
    aead: str = "aes-256-gcm",
    segment_size: int = 1 << 20,
    hash: str = "blake3",
    context: Mapping[str, str] | None = None,
    origin: Mapping[str, str] | None = None,
) -> SealReport:
    """Seal the safetensors model directory ``src`` into the new directory ``out``."""
    files, tensors, nbytes, copied, hd = native.seal_dir(
        src,
        out,
        kek,
        aead=aead,
        segment_size=segment_size,
        hash=hash,
        context=dict(context) if context is not None else None,
        origin=dict(origin) if origin is not None else None,
    )
    return SealReport(files, tensors, nbytes, tuple(copied), hd)


def rekey(path: StrPath, old_kek: StrPath | KekWrapper, new_kek: StrPath | KekWrapper) -> None:
    """Rewrap the data key under ``new_kek`` (possibly another provider); only ``weights.ctxh`` changes."""
    native.rekey(path, old_kek, new_kek)


def create_kek(path: StrPath) -> None:
    """Write a new random 32-byte KEK file with mode 0600 (never overwrites)."""
    native.create_kek(path)


def inspect(path: StrPath) -> dict[str, Any]:
    """The validated header without secrets, plus ``header_digest`` and ``total_segments``."""
    result: dict[str, Any] = json.loads(native.inspect(path))
    return result


def verify_ciphertext(path: StrPath) -> VerifyReport:
    """Hash-check every ciphertext segment without a key (authenticity needs the signature)."""
    return VerifyReport(*native.verify_ciphertext(path))
