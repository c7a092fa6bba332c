"""The audit half of ``bastion._native``, imported only here (and refused when built for another version)."""

from __future__ import annotations

import bastion

try:
    from bastion import _native
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "bastion's Rust extension (bastion._native) is not built or failed to load; "
        "build it with `maturin develop --release`"
    ) from exc

if getattr(_native, "__version__", None) != bastion.__version__:
    raise ImportError(
        f"stale bastion._native extension: built for {getattr(_native, '__version__', None)!r} but the package "
        f"is {bastion.__version__!r}; rebuild it with `maturin develop --release`"
    )

AuditChain = _native.AuditChain
AuditSigningKey = _native.AuditSigningKey
AuditPublicKey = _native.AuditPublicKey
AuditContentKey = _native.AuditContentKey
audit_keygen = _native.audit_keygen
audit_segment_name = _native.audit_segment_name
audit_verify_dir = _native.audit_verify_dir

__all__ = [
    "AuditChain",
    "AuditContentKey",
    "AuditPublicKey",
    "AuditSigningKey",
    "audit_keygen",
    "audit_segment_name",
    "audit_verify_dir",
]
