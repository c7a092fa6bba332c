"""vLLM load format ``bastion``: serves a sealed model directory (docs/sealed-format.md).

Registered by ``bastion.engine.vllm.plugin.register()`` in every vLLM process; it runs inside the process
that owns the weights (the CPU worker or each GPU rank). The key provider, trust policy and served
name come from the server's engine-process contract (``bastion.engine.process``: its ``sealed`` part) or from
``model_loader_extra_config={"kek_file", "trust_policy", "served_model"}``; key material never passes
through Python.

The directory loaded is the contract's ``sealed.model_dir`` (vLLM's own model path is the server's
verified copy of the small files, ``bastion.models.verified``, which holds no weights). Before any weight
is decrypted, the OMS signature (``model.sig``) is checked here, in the loading process, against the
trust policy, every signed file but the data files is compared with the signed manifest
(``weights.ctxh`` on the exact bytes the Rust reader decoded), and what was verified must be what the
server attested (``check_attested``): the header bytes hash to the contract's ``header_digest`` and the
signature's OMS digest is its ``subject_digest``, so another artefact the trust policy would also allow
for this name (an older signed release swapped in after the server's check) is refused. Every byte of every data file is read once: each ciphertext segment's hash is checked against the
header's table, then the segment is authenticated and decrypted by the Rust reader, and only then do
its bytes become a tensor for ``model.load_weights``. The bytes no tensor covers (each file's embedded
safetensors header) are read and verified too, so a loaded model means a fully verified artifact. Any
failure (integrity, wrong key, missing or unexpected tensor) aborts the load with an error naming the
file and segment; the engine then fails to start and nothing serves.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch

from bastion.digest import hash_bytes
from bastion.engine.process import SealedLoad, current
from bastion.errors import BastionError, ConfigError, IntegrityError
from bastion.weights.policy import TrustPolicy, load_policy
from bastion.weights.sealed import SealedReader, TensorInfo, header_json
from bastion.weights.signing import SignedManifest, verify_sealed

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from bastion.keys import KeyProvider

LOAD_FORMAT = "bastion"
SEALED_HEADER = "weights.ctxh"
EXTRA_CONFIG_KEYS = frozenset({"kek_file", "trust_policy", "served_model"})

# In vLLM's processes only the "vllm" logger tree has a handler (bastion configures logging in the
# server process only), so the loader logs under it to reach the server log from the worker.
log = logging.getLogger("vllm.bastion.sealed_loader")

# safetensors dtype -> torch dtype. Sub-byte float formats (F4, F6_*) have no byte-addressable torch
# dtype and are refused.
_TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F64": torch.float64,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
if hasattr(torch, "float8_e8m0fnu"):
    _TORCH_DTYPES["F8_E8M0"] = torch.float8_e8m0fnu


def torch_dtype(dtype: str) -> torch.dtype:
    try:
        return _TORCH_DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"sealed tensor dtype {dtype} is not supported by the bastion loader") from None


def to_tensor(data: Buffer, info: TensorInfo, offset: int = 0) -> torch.Tensor:
    """A tensor over bytes ``[offset, offset + nbytes)`` of ``data`` without a copy (it keeps ``data``
    referenced); copied instead when the offset is not aligned to the element size."""
    dtype = torch_dtype(info.dtype)
    nbytes = info.data_offsets[1] - info.data_offsets[0]
    if nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    itemsize = dtype.itemsize
    if offset % itemsize:
        with memoryview(data) as whole:
            data, offset = bytearray(whole[offset : offset + nbytes]), 0
    flat = torch.frombuffer(data, dtype=dtype, count=nbytes // itemsize, offset=offset)
    return flat.reshape(info.shape)


# Plaintext is read in batches of consecutive tensors of about this size: one call into Rust per batch,
# every segment hashed and decrypted once (a batch that ends inside a segment decrypts that segment whole and
# the next batch starts with its remainder, copied: see ``sealed_weights``).
# 16 MiB, not more: the batch buffers are reused, but the first few are new memory, and first touches of new
# memory cost more than decrypting it (64 MiB batches: 0.27-0.66 GB/s on one core here; 16 MiB: 1.1-1.3).
BATCH_BYTES = 16 << 20


def _batches(
    spans: list[tuple[int, int, str]], length: int, limit: int
) -> Iterator[tuple[int, int, list[tuple[int, str]]]]:
    """Splits ``[0, length)`` into contiguous ranges ending at tensor ends, about ``limit`` bytes each;
    yields ``(begin, end, [(tensor begin, name), ...])``. The bytes no tensor covers (the data file's
    embedded safetensors header, padding) belong to the range that holds them, so all are read."""
    begin, members = 0, []
    for b, e, name in sorted(spans):
        members.append((b, name))
        if e - begin >= limit:
            yield begin, e, members
            begin, members = e, []
    if members or begin < length:
        yield begin, length, members


def _new_buffer(size: int) -> mmap.mmap:
    """``size`` bytes of private anonymous memory (at least one byte: an empty mapping does not exist).

    Not a ``bytearray``: that zero-fills its memory when made, on the thread that asks, so every page of a new
    buffer was faulted in twice over (the fill, then the decryption); a fresh mapping's pages are zero already
    and are faulted in by the decrypting threads as they write them (issue 19, alternating fresh processes on two
    threads: the loader path 2.3-2.4 -> 2.6-2.9 GB/s from this alone). Nor numpy's arrays: numpy advises
    transparent huge pages for large arrays, and where the kernel compacts memory for them on a fault, the first
    use of each buffer stalled."""
    return mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class BatchBuffers:
    """The batch buffers the loader owns and reuses, so that reading a batch costs no allocation and no page
    faults once the first few are made (fresh buffers cost more than decryption: issue 19). They are private
    anonymous mappings (``_new_buffer``).

    A buffer is handed out again only when nothing else references it. Every tensor over a batch keeps its
    buffer referenced (``torch.frombuffer`` holds an export of it until the tensor's storage, and every view of
    it, is gone), so a model that keeps a yielded tensor never sees its bytes overwritten: the pool makes a new
    buffer instead. It keeps at most ``keep`` buffers (the last tensor a consumer holds on to, the batch in hand
    and the one being read ahead need three)."""

    def __init__(self, keep: int = 4) -> None:
        self._keep = keep
        self._pool: list[mmap.mmap] = []
        # sys.getrefcount of a pooled buffer that nothing else references, measured the way take() asks.
        self._pool.append(_new_buffer(1))
        self._alone = self._refs(0)
        self._pool.clear()

    def _refs(self, i: int) -> int:
        return sys.getrefcount(self._pool[i])

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes that nothing else references. The pool is kept in the order
        buffers were handed out; when every pooled buffer is still referenced, the one handed out longest ago is
        taken to be the model's (it kept tensors over it) and leaves the pool for the new buffer."""
        free = [i for i in range(len(self._pool)) if self._refs(i) == self._alone]
        for i in free:
            if len(self._pool[i]) >= size:
                self._pool.append(self._pool.pop(i))
                return self._pool[-1]
        buf = _new_buffer(size)
        if len(self._pool) >= self._keep:
            # the smallest free buffer (too small for this batch), else the one handed out longest ago
            self._pool.pop(min(free, key=lambda i: len(self._pool[i])) if free else 0)
        self._pool.append(buf)
        return buf


def sealed_weights(
    reader: SealedReader, stats: dict[str, int] | None = None, batch_bytes: int = BATCH_BYTES
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the sealed model as ``(name, tensor)``, in file order, each verified before use.

    Each data file is read front to back in contiguous batches that together cover every byte of it, so
    when the iterator is exhausted every byte of the artifact has been hash-checked and authenticated.
    """
    names = reader.tensor_names()
    infos = {n: reader.tensor_info(n) for n in names}
    for info in infos.values():
        torch_dtype(info.dtype)  # refuse an unsupported dtype before any decryption
    files = reader.files()
    plan = [
        (fi, begin, end, members)
        for fi, (_data_name, _source, length) in enumerate(files)
        for begin, end, members in _batches(
            [(i.data_offsets[0], i.data_offsets[1], n) for n, i in infos.items() if i.file == fi], length, batch_bytes
        )
    ]
    verified = 0
    buffers = BatchBuffers()
    seg = int(header_json(reader.header_file())["segment_size"])
    lengths = [length for _data, _source, length in files]

    def read(fi: int, begin: int, end: int, prev: tuple[mmap.mmap, int] | None) -> mmap.mmap:
        """Plaintext ``[begin, stop)`` of file ``fi``, ``stop`` the end of the segment that holds byte
        ``end - 1`` (or the file's end): Rust is asked only for whole segments, so no segment is decrypted
        twice and none into a scratch copy. The batch's first bytes up to the next segment boundary are the
        tail the previous batch of this file (``prev``: its buffer and where it begins) decrypted with its
        last segment, authenticated there, and copied from it."""
        stop = min(lengths[fi], -(-end // seg) * seg)
        aligned = min(stop, -(-begin // seg) * seg)
        buf = buffers.take(stop - begin)
        with memoryview(buf) as whole:  # released before the buffer is used
            if aligned > begin:
                assert prev is not None and prev[1] <= begin, "a batch inside a segment follows one that read it"
                with memoryview(prev[0]) as before:
                    whole[: aligned - begin] = before[begin - prev[1] : aligned - prev[1]]
            if stop > aligned:
                with whole[aligned - begin : stop - begin] as out:
                    reader.read_range_into(fi, aligned, out)
        return buf

    # Read-ahead: the next batch is read, hash-checked and decrypted on a worker thread (the native call
    # releases the GIL) while the caller copies the current batch's tensors into the model.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-readahead") as pool:
        pending = pool.submit(read, *plan[0][:3], None) if plan else None
        for k, (fi, begin, end, members) in enumerate(plan):
            assert pending is not None
            data = pending.result()  # raises the batch's IntegrityError here, before any of its tensors
            if k + 1 < len(plan):
                nfi, nbegin, nend = plan[k + 1][:3]
                pending = pool.submit(read, nfi, nbegin, nend, (data, begin) if nfi == fi else None)
            else:
                pending = None
            verified += end - begin
            for b, name in members:
                yield name, to_tensor(data, infos[name], b - begin)
            del data
    if stats is not None:
        stats["tensors"] = len(names)
        stats["bytes"] = verified
        stats["files"] = len(files)


class _LoadsWeights(Protocol):
    """A vLLM model's ``load_weights`` (``nn.Module`` does not declare it): the names loaded, or None."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[str] | None: ...


def is_sealed_dir(path: str | os.PathLike[str]) -> bool:
    return os.path.isfile(os.path.join(path, SEALED_HEADER))


def check_attested(expected: SealedLoad, header_file: bytes, manifest: SignedManifest | None) -> None:
    """Refuses (``IntegrityError``, expected against found) an artefact other than the one the server
    attested: ``header_file`` (the ``weights.ctxh`` bytes the reader decoded, which fix every data byte)
    must hash to ``expected.header_digest``, and the verified signature's OMS subject digest (none: "")
    must be ``expected.subject_digest``."""
    where = os.path.join(expected.model_dir, SEALED_HEADER)
    found = "blake3:" + hash_bytes(header_file)
    if found != expected.header_digest:
        raise IntegrityError(
            f"{where}: not the artefact the server attested as {expected.digest}: expected header "
            f"{expected.header_digest}, found {found}"
        )
    subject = manifest.model_digest if manifest is not None else ""
    if subject != expected.subject_digest:
        raise IntegrityError(
            f"{os.path.join(expected.model_dir, 'model.sig')}: not the signature the server attested: expected "
            f"OMS digest {expected.subject_digest or '(unsigned)'}, found {subject or '(unsigned)'}"
        )


def _register() -> None:
    from torch import nn
    from vllm.config import ModelConfig
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import register_model_loader
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    class BastionSealedLoader(BaseModelLoader):
        """``load_format="bastion"``: decrypts and verifies a sealed directory into the model."""

        def __init__(self, load_config: LoadConfig) -> None:
            super().__init__(load_config)
            extra = load_config.model_loader_extra_config or {}
            if not isinstance(extra, dict) or set(extra) - EXTRA_CONFIG_KEYS:
                raise ValueError(
                    f"load format {LOAD_FORMAT}: model_loader_extra_config accepts only {sorted(EXTRA_CONFIG_KEYS)}"
                )
            self._kek_file: str | None = extra.get("kek_file")
            self._trust_policy: str | None = extra.get("trust_policy")
            self._served_model: str | None = extra.get("served_model")

        def _provider(self) -> KeyProvider:
            from bastion.keys import FileKeyProvider, provider_from_env

            if self._kek_file:
                return FileKeyProvider(self._kek_file)
            return provider_from_env(self._sealed().key_provider)

        def _policy(self) -> tuple[TrustPolicy, str]:
            if self._trust_policy and self._served_model:
                return load_policy(self._trust_policy), self._served_model
            sealed = self._sealed()
            return load_policy(self._trust_policy or sealed.trust_policy), self._served_model or sealed.served_model

        def _sealed(self) -> SealedLoad:
            sealed = current().sealed
            if sealed is None:
                raise ConfigError(
                    "no sealed-model contract in this process (the server's engine-process contract has no "
                    "'sealed' part); nothing loads unverified"
                )
            return sealed

        def _target(self, model_config: ModelConfig) -> tuple[str, SealedLoad | None]:
            """The sealed directory and what the server attested for it; without the server's contract
            (model_loader_extra_config alone) vLLM's model path, bound to nothing."""
            sealed = current().sealed
            if sealed is not None:
                return str(sealed.model_dir), sealed
            return str(model_config.model), None

        def download_model(self, model_config: ModelConfig) -> None:
            path, _ = self._target(model_config)
            if not is_sealed_dir(path):
                raise ValueError(f"load format {LOAD_FORMAT}: {path} is not a sealed model directory")

        def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
            path, attested = self._target(model_config)
            started = time.perf_counter()
            stats: dict[str, int] = {}
            try:
                self.download_model(model_config)
                provider = self._provider()
                provider.check()
                policy, served = self._policy()
                with provider.open(path) as reader:
                    header = reader.header_file()
                    origin = (header_json(header).get("origin") or {}).get("source_uri")
                    manifest = verify_sealed(path, policy, served, header_file=header, origin=origin)
                    if manifest is None:
                        log.warning("sealed model %s is UNSIGNED (allowed by the trust policy for %r)", path, served)
                    else:
                        log.info(
                            "model.sig verified in pid %d: signer %s (%s), OMS digest %s",
                            os.getpid(),
                            manifest.signer,
                            manifest.identity,
                            manifest.model_digest,
                        )
                    if attested is not None:
                        check_attested(attested, header, manifest)
                        log.info("sealed model %s is the artefact the server attested (%s)", path, attested.digest)
                    loaded = cast(_LoadsWeights, model).load_weights(sealed_weights(reader, stats))
            except BastionError as exc:
                # str(exc) carries the detail: the file and segment that failed, never key material.
                log.error("sealed model load refused: %s", exc)
                raise RuntimeError(f"sealed model load refused: {exc}") from None
            if "tensors" not in stats:
                raise RuntimeError(f"sealed model load refused: {path}: the model stopped reading weights early")
            if model_config.quantization is None and loaded is not None:
                # Same strict check as vLLM's default loader: every parameter must come from the artifact.
                DefaultModelLoader.track_weights_loading(self, model, set(loaded))  # type: ignore[arg-type]  # borrowed: it does not use self
            elapsed = time.perf_counter() - started
            log.info(
                "sealed model verified and loaded: %s, %d tensors in %d files, %.1f MiB in %.2f s (%.0f MiB/s)",
                path,
                stats["tensors"],
                stats["files"],
                stats["bytes"] / 2**20,
                elapsed,
                stats["bytes"] / 2**20 / max(elapsed, 1e-9),
            )

    register_model_loader(LOAD_FORMAT)(BastionSealedLoader)


_registered = False


def register() -> None:
    """Registers the ``bastion`` load format with vLLM (idempotent)."""
    global _registered
    if _registered:
        return
    _register()
    _registered = True


def loader_class() -> Any:
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader

    register()
    return type(get_model_loader(LoadConfig(load_format=LOAD_FORMAT)))
