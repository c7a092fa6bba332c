"""A replica's node-local audit chain (issue 16, item 6).

The front door keeps the one chain of tenant requests (``[audit]`` of its own configuration); what happens
only on a replica's node — its engine started or failed to, the sealed model verified and its key released
by the node's own key provider, the engine died, the replica stopped — is recorded there, in a small chain
of the same format (``bastion.audit.log.AuditLog``: hash-chained, signed checkpoints, fsynced before it
counts), one per Serve replica: ``<node audit dir>/replicas/<replica id>/``, signed with the node's audit key
(``<node audit dir>/keys/`` unless its ``[audit]`` names key files), its witness in ``<node audit
dir>/witness/<replica id>.json``. The node's ``[audit]`` and ``cache_dir`` come from the node's own
configuration file (``ReplicaSpec.config_file``): nothing about it crosses Ray.

The replica's join report carries the chain's latest checkpoint (:meth:`NodeAudit.checkpoint`, taken after
the model's record is durable: ``<log id>:<seq>:<hash>``); the front door refuses a replica without one and
writes it into its ``replica_joined`` record, so ``bastion audit verify --node`` can later prove that each
admitted replica's chain still holds what it had when it joined (``bastion.audit.replica_set``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
from pathlib import Path
from typing import Any, Final

from bastion.audit.keys import keygen, private_dir
from bastion.audit.log import AuditLog
from bastion.audit.replica_set import REPLICAS_DIR, format_checkpoint
from bastion.audit.settings import AuditSettings
from bastion.errors import BastionError, ConfigError

log = logging.getLogger(__name__)

#: The principal of a replica chain's records.
PRINCIPAL: Final = "bastion:replica"
WITNESS_DIR: Final = "witness"
_REPLICA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Events of a replica chain (``event``; ``decision`` in parentheses).
MODEL_LOADED: Final = "model_loaded"  # (verified) model, digests, key provider
MODEL_LOAD_FAILED: Final = "model_load_failed"  # (refused) why
ENGINE_DIED: Final = "engine_died"  # (alert)
REPLICA_STOPPED: Final = "replica_stopped"  # (stopped)


def chain_settings(node: AuditSettings, cache_dir: Path, replica_id: str) -> AuditSettings:
    """The settings of ``replica_id``'s chain under the node's ``[audit]`` (see the module). Creates the
    node's key set on first use when its ``[audit]`` names none (under a lock: replicas start together)."""
    if not _REPLICA_ID.fullmatch(replica_id):
        raise ConfigError("replica id: 1-64 of A-Z a-z 0-9 _ - (it names the replica's audit directory)")
    base = private_dir(node.resolved_dir(cache_dir))
    signing, public, content = node.key_paths(base)
    if not node.keys_configured():
        _ensure_keys(base / "keys")
    witness_dir = node.witness_file.parent if node.witness_file is not None else private_dir(base / WITNESS_DIR)
    return node.model_copy(
        update={
            "dir": private_dir(base / REPLICAS_DIR) / replica_id,
            "signing_key_file": signing,
            "public_key_file": public,
            "content_key_file": content,
            "witness_file": witness_dir / f"{replica_id}.json",
        }
    )


def _ensure_keys(keys: Path) -> None:
    lock = private_dir(keys.parent) / ".keys.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not keys.exists():
            keygen(keys)
    finally:
        os.close(fd)


class NodeAudit:
    """One replica's chain (see the module). Appends wait until the record is durable."""

    def __init__(self, audit_log: AuditLog, replica_id: str) -> None:
        self._log = audit_log
        self.replica_id = replica_id

    @classmethod
    async def open(cls, node: AuditSettings, cache_dir: Path, replica_id: str) -> NodeAudit:
        settings = await asyncio.to_thread(chain_settings, node, cache_dir, replica_id)
        audit_log = await asyncio.to_thread(AuditLog.open, settings, cache_dir)
        log.info("replica %s keeps its node-local audit chain in %s", replica_id, audit_log.directory)
        return cls(audit_log, replica_id)

    @property
    def directory(self) -> Path:
        return self._log.directory

    async def record(
        self, event: str, decision: str, *, model: str, model_digest: str = "", reason: str = "", node: str = ""
    ) -> int:
        fields: dict[str, Any] = {
            "principal": PRINCIPAL,
            "event": event,
            "decision": decision,
            "replica": self.replica_id,
            "model": model[:256],
        }
        for k, v in (("model_digest", model_digest[:128]), ("reason", reason[:512]), ("node", node[:128])):
            if v:
                fields[k] = v
        return await self._log.append("decision", fields)

    def checkpoint(self) -> str:
        """The chain's latest durable checkpoint (``<log id>:<seq>:<hash>``)."""
        w = self._log.latest_checkpoint
        if w is None:  # AuditLog.open writes one before it returns
            raise ConfigError("the replica's audit chain has no checkpoint")
        return format_checkpoint(w)

    async def close(self) -> None:
        await self._log.aclose()


def failure_reason(exc: BaseException) -> str:
    """What a chain record may say about a failure: bastion's own message, else the exception's type (a
    third-party message could quote a secret)."""
    if isinstance(exc, BastionError):
        return str(exc)[:512]
    return type(exc).__name__
