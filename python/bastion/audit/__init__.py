"""The tamper-evident audit log (docs/audit-log.md): hash-chained JSON Lines records, Ed25519-signed
checkpoints, group-committed fsyncs, a witness of the latest checkpoint, and a verifier.

``bastion.audit.settings`` and ``bastion.audit.errors`` load nothing native; the rest (``AuditLog``,
``verify``, ``keygen``) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bastion.audit.errors import AuditUnavailable
from bastion.audit.settings import AuditSettings

if TYPE_CHECKING:
    from bastion.audit.keys import keygen
    from bastion.audit.log import AuditLog
    from bastion.audit.verifier import VerifyResult, verify

__all__ = ["AuditLog", "AuditSettings", "AuditUnavailable", "VerifyResult", "keygen", "verify"]

_LAZY = {"AuditLog": "log", "keygen": "keys", "verify": "verifier", "VerifyResult": "verifier"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"bastion.audit.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'bastion.audit' has no attribute {name!r}")
