"""The one import point of the Rust extension ``bastion._native`` (typed by ``bastion/_native.pyi``).

Every other module imports the extension's classes and functions from here, never ``bastion._native``
itself (the import-linter contract "native-home" enforces it), so one check guards them all: importing
this module loads the extension and refuses, with an ImportError naming both versions and the fix, one
built for another version of the package (a stale build would otherwise run old native code under new
Python code). Importing ``bastion`` alone loads nothing native.
"""

from __future__ import annotations

import bastion

_FIX = "rebuild it with `make setup` (or `maturin develop --release`)"

try:
    from bastion import _native
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(f"bastion's Rust extension (bastion._native) is not built or failed to load; {_FIX}") from exc


def check_version(native: str, package: str) -> None:
    """Raise ImportError unless the extension's version ``native`` is the package's ``package``."""
    if native != package:
        raise ImportError(
            f"stale bastion._native extension: built for version {native!r} but the bastion package is "
            f"version {package!r}; {_FIX}"
        )


NATIVE_VERSION = str(getattr(_native, "__version__", "<unknown>"))
check_version(NATIVE_VERSION, bastion.__version__)


def native_version() -> str:
    """The version the loaded extension was built as (equal to ``bastion.__version__``)."""
    return NATIVE_VERSION


# Digests (bastion.digest)
Blake3Hasher = _native.Blake3Hasher
digest_dir = _native.digest_dir
# The sealed format (bastion.weights.sealed)
SealedReader = _native.SealedReader
seal_dir = _native.seal_dir
rekey = _native.rekey
create_kek = _native.create_kek
inspect = _native.inspect
verify_ciphertext = _native.verify_ciphertext
# The audit log (bastion.audit)
AuditChain = _native.AuditChain
AuditSigningKey = _native.AuditSigningKey
AuditPublicKey = _native.AuditPublicKey
AuditContentKey = _native.AuditContentKey
audit_keygen = _native.audit_keygen
audit_segment_name = _native.audit_segment_name
audit_verify_dir = _native.audit_verify_dir
# Tenant isolation in the EngineCore (bastion.engine.vllm)
BlockKeyer = _native.BlockKeyer
KvLedger = _native.KvLedger

__all__ = [
    "NATIVE_VERSION",
    "AuditChain",
    "AuditContentKey",
    "AuditPublicKey",
    "AuditSigningKey",
    "Blake3Hasher",
    "BlockKeyer",
    "KvLedger",
    "SealedReader",
    "audit_keygen",
    "audit_segment_name",
    "audit_verify_dir",
    "check_version",
    "create_kek",
    "digest_dir",
    "inspect",
    "native_version",
    "rekey",
    "seal_dir",
    "verify_ciphertext",
]
