"""Type stubs for the Rust extension ``bastion._native`` (import it via ``bastion.native``).

Errors are ``bastion.errors`` classes raised as ``Class(detail)``: ``exc.detail`` (and ``str(exc)``) names
the path or segment, ``exc.public_message`` is the class's fixed client-safe text; ``InvalidArgument``
names the argument and its limit.
"""

import os
from array import array
from collections.abc import Sequence
from typing import Any, final

from typing_extensions import Buffer

__all__ = [
    "AuditChain",
    "AuditContentKey",
    "AuditPublicKey",
    "AuditSigningKey",
    "Blake3Hasher",
    "BlockKeyer",
    "KvLedger",
    "SealedReader",
    "__version__",
    "audit_keygen",
    "audit_segment_name",
    "audit_verify_dir",
    "create_kek",
    "digest_dir",
    "inspect",
    "rekey",
    "seal_dir",
    "verify_ciphertext",
]

__version__: str

def digest_dir(path: str | os.PathLike[str]) -> tuple[str, list[tuple[str, int, str]]]:
    """Return ``("blake3:<hex>", [(relpath, size, "blake3:<hex>"), ...])`` sorted by relpath.

    Raises bastion.errors.NativeIOError, IntegrityError or FormatError.
    """

@final
class Blake3Hasher:
    """Incremental BLAKE3; ``finalize()`` consumes it (then raises bastion.errors.AlreadyFinalized)."""

    def __new__(cls) -> Blake3Hasher: ...
    def update(self, data: bytes) -> None:
        """Absorb immutable ``bytes`` (read in place; the GIL is released for large inputs)."""

    def finalize(self) -> str:
        """The digest as 64 lowercase hex digits."""

# Sealed model format (import it via bastion.weights).

@final
class SealedReader:
    """A sealed model opened with a 0600/0400 KEK file (read by Rust) or a key-provider object."""

    def __new__(cls, path: str | os.PathLike[str], kek: str | os.PathLike[str] | Any) -> SealedReader: ...
    def header_file(self) -> bytes: ...
    def tensor_names(self) -> list[str]: ...
    def tensor_info(self, name: str) -> tuple[str, list[int], int, tuple[int, int]]: ...
    def files(self) -> list[tuple[str, str, int]]: ...
    def read_tensor(self, name: str) -> bytes: ...
    def read_range(self, file_index: int, begin: int, end: int) -> bytes: ...
    def read_range_into(self, file_index: int, begin: int, out: Buffer) -> None: ...
    def verify_ciphertext(self) -> tuple[int, int, int]: ...
    def verify_all(self) -> tuple[int, int, int]: ...
    def close(self) -> None: ...

def seal_dir(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    kek: str | os.PathLike[str] | Any,
    *,
    aead: str = "aes-256-gcm",
    segment_size: int = 1048576,
    hash: str = "blake3",
    context: dict[str, str] | None = None,
    origin: dict[str, str] | None = None,
) -> tuple[int, int, int, list[str], str]: ...
def rekey(
    path: str | os.PathLike[str], old_kek: str | os.PathLike[str] | Any, new_kek: str | os.PathLike[str] | Any
) -> None: ...
def create_kek(path: str | os.PathLike[str]) -> None: ...
def inspect(path: str | os.PathLike[str]) -> str: ...
def verify_ciphertext(path: str | os.PathLike[str]) -> tuple[int, int, int]: ...

# Tamper-evident audit log (import it via bastion.audit).

@final
class AuditChain:
    """The chain state of one log; seals records in order (a failed seal changes nothing)."""

    @staticmethod
    def recover(dir: str | os.PathLike[str]) -> tuple[AuditChain, dict[str, Any]]:
        """``(chain, {fresh, segment, segment_len, truncated})``; a torn final line is cut off."""

    def seal(self, kind: str, fields_json: bytes | str, now_ms: int) -> tuple[int, bytes]:
        """``(seq, line)``; raises bastion.errors.InvalidArgument naming the field (or ``kind``)."""

    def checkpoint(self, signing_key: AuditSigningKey, now_ms: int) -> tuple[int, str, bytes]:
        """``(seq, hash_hex, line)`` of a signed checkpoint."""

    @property
    def log_id(self) -> str: ...
    @property
    def next_seq(self) -> int: ...
    @property
    def since_checkpoint(self) -> int: ...

@final
class AuditSigningKey:
    """Ed25519 PKCS#8 checkpoint key (0600/0400 file, read by Rust; never returned)."""

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> AuditSigningKey: ...
    @property
    def key_id(self) -> str: ...

@final
class AuditPublicKey:
    """The checkpoint verification key (``ed25519:<64 hex>``)."""

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> AuditPublicKey: ...
    @property
    def key_id(self) -> str: ...

@final
class AuditContentKey:
    """The content-HMAC key (32 bytes, 0600/0400 file, read by Rust; never returned)."""

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> AuditContentKey: ...
    def mac_for(self, tenant: str, data: bytes) -> str:
        """``hmac-sha256:<64 hex>`` under the key derived for ``tenant`` (HKDF-SHA256)."""

def audit_keygen(
    signing_path: str | os.PathLike[str], public_path: str | os.PathLike[str], content_path: str | os.PathLike[str]
) -> str: ...
def audit_segment_name(i: int) -> str: ...
def audit_verify_dir(
    dir: str | os.PathLike[str],
    public_key_path: str | os.PathLike[str],
    witness_seq: int | None = None,
    witness_hash: str | None = None,
    from_witness: bool = False,
) -> dict[str, Any]:
    """``{segments, records, bytes, log_id, last_seq, last_hash, last_checkpoint, unsigned_tail, problem}``;
    ``problem`` is None or ``{segment, line, seq, reason}``. ``from_witness``: read only from the segment
    holding the witnessed checkpoint to the end (what the writer checks at start)."""

# --- keyed, typed prefix-cache block keys (bastion.engine.vllm.block_hasher) ---

@final
class BlockKeyer:
    """Keyed BLAKE3 block keys over typed, length-prefixed fields; the 32-byte key cannot be read back."""

    def __new__(cls, key: bytes) -> BlockKeyer: ...
    def chain(
        self,
        parent: bytes | None,
        tokens: Sequence[int] | array[int],
        block_size: int,
        public_blocks: int,
        tenant_key: bytes,
        adapter: tuple[str, str] | None = None,
    ) -> list[bytes]:
        """Keys of the full blocks of ``tokens`` chained from ``parent``; the first ``public_blocks`` public."""

    def block_key(
        self,
        parent: bytes | None,
        tokens: Sequence[int] | array[int],
        tenant_key: bytes | None,
        adapter: tuple[str, str] | None = None,
        mm: list[tuple[int, bytes]] = ...,
        prompt_embeds: bytes | None = None,
    ) -> bytes:
        """One block's key with every extra field; ``tenant_key=None`` is the public partition."""

# --- per-tenant KV-cache block budgets (bastion.engine.vllm.scheduler) ---

@final
class KvLedger:
    """Per-tenant KV block ledger of one pool: reservation, cap, held/cached counters (O(1) each)."""

    def __new__(cls, capacity: int) -> KvLedger: ...
    def register(self, key: str, reserved: int, cap: int) -> int:
        """The tenant's slot (limits updated); InvalidArgument if reserved > cap or reservations exceed capacity."""

    def slot(self, key: str) -> int | None: ...
    def admit_gate(self, slot: int, n: int) -> int | None:
        """None if ``n`` more blocks pass the cap, else the free blocks to keep for other tenants' reservations."""

    def can_admit(self, slot: int, n: int, free: int) -> bool: ...
    def others_unused(self, slot: int) -> int: ...
    def on_allocate(self, slot: int, n: int) -> None: ...
    def on_free(self, slot: int, n: int) -> None: ...
    def on_cache(self, slot: int, n: int) -> None: ...
    def on_uncache(self, slot: int, n: int) -> None: ...
    def on_evict(self, slot: int, n: int) -> None: ...
    def on_preempt(self, slot: int) -> None: ...
    def open_request(self, slot: int) -> None:
        """A request of ``slot`` now holds a charge (counted by ``step_fits``)."""

    def close_request(self, slot: int) -> None:
        """A request of ``slot`` released its charge; InvalidArgument if none is open."""

    def step_fits(self, per_request: int, fixed: int, free: int) -> bool:
        """Whether a step growing each open request by at most ``per_request`` blocks, plus ``fixed`` in all,
        keeps every tenant within its cap and every tenant's unused reservation within ``free`` blocks
        (O(tenants))."""

    def held(self, slot: int) -> int: ...
    def over_reservation(self, slot: int) -> bool: ...
    def evictable(self, slot: int, pending: int) -> bool: ...
    def at_cap(self, slot: int) -> bool: ...
    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{tenant_key: {reserved, cap, held, cached, preemptions, evictions}}``."""

    @property
    def capacity(self) -> int: ...
    @property
    def total_held(self) -> int: ...
    @property
    def total_unused(self) -> int: ...
