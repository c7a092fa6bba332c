"""``[audit]`` settings: where the tamper-evident audit log lives, its keys, rotation and commit policy.

Secure defaults: the log is always on, under ``<cache_dir>/audit`` (mode 0700). Key files left unset are
``<dir>/keys/signing.pk8`` (Ed25519 PKCS#8, 0600), ``<dir>/keys/signing.pub`` and ``<dir>/keys/content.key``
(32 bytes, 0600); they are generated on first start only when none of the three is configured and none
exists. Keeping the signing key (a secret mount) and the witness file (other storage) off the log's disk
is what makes a rewrite or a truncation by someone who can write the log detectable (docs/audit-log.md).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

MIB = 1 << 20

#: File names of the default keys inside ``<dir>/keys/`` (also what ``bastion audit keygen DIR`` writes).
SIGNING_KEY_NAME = "signing.pk8"
PUBLIC_KEY_NAME = "signing.pub"
CONTENT_KEY_NAME = "content.key"
WITNESS_NAME = "witness.json"


class AuditSettings(BaseModel):
    """The audit log's settings (``[audit]``); paths left ``None`` are derived as documented per field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dir: Path | None = Field(default=None, description="log directory (mode 0700); None: <cache_dir>/audit")
    signing_key_file: Path | None = Field(
        default=None, description="Ed25519 PKCS#8 checkpoint signing key (0600/0400); None: <dir>/keys/signing.pk8"
    )
    public_key_file: Path | None = Field(
        default=None,
        description="its public key (ed25519:<hex>), checked against the signing key at start; "
        "None: <dir>/keys/signing.pub",
    )
    content_key_file: Path | None = Field(
        default=None, description="32-byte content-HMAC key (0600/0400); None: <dir>/keys/content.key"
    )
    segment_max_bytes: int = Field(
        default=64 * MIB,
        ge=64 * 1024,
        le=1024 * MIB,
        description="a segment is closed with a checkpoint and the next one started once it reaches this size",
    )
    checkpoint_every_records: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="replace the witness after this many records (every group commit is signed regardless)",
    )
    checkpoint_every_s: float = Field(
        default=10.0, gt=0, le=3600, description="or after this many seconds with a newer checkpoint than it names"
    )
    commit_max_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="group commit: how long a batch waits for more records before its write and fsync. 0 (the "
        "default): never waits; the batch is whatever queued during the previous write and fsync. A wait is paid "
        "twice by every Generate call (its begin and its request record), so only a disk whose fsync is nearly free "
        "gains from one",
    )
    min_free_bytes: int = Field(
        default=64 * MIB,
        ge=0,
        description="the reserve: below this much free space on the log's file system the server takes no new "
        "calls (UNAVAILABLE, health NOT_SERVING); calls in flight and refusal records still use it",
    )
    alarm_free_bytes: int = Field(
        default=512 * MIB,
        ge=0,
        description="below this much free space the log raises its disk alarm (a log line, an audit record and "
        "the bastion_audit_disk_alarm gauge); at least min_free_bytes",
    )
    refusal_window_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="refusals with the same peer address, principal, tenant, method and reason are recorded in "
        "full once per window, the rest as one record with their count and first and last time",
    )
    refusal_max_keys: int = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="distinct refusal keys per window; beyond it refusals are counted under one overflow key",
    )
    witness_file: Path | None = Field(
        default=None,
        description="the latest checkpoint (log id, seq, hash), replaced atomically after each "
        "checkpoint; put it on other storage; None: <dir>/witness.json",
    )

    @model_validator(mode="after")
    def _alarm_above_reserve(self) -> AuditSettings:
        if self.alarm_free_bytes < self.min_free_bytes:
            raise ValueError("audit.alarm_free_bytes must be at least audit.min_free_bytes")
        return self

    def resolved_dir(self, cache_dir: Path) -> Path:
        return self.dir if self.dir is not None else cache_dir / "audit"

    def key_paths(self, log_dir: Path) -> tuple[Path, Path, Path]:
        """(signing, public, content) key files, defaults filled in."""
        keys = log_dir / "keys"
        return (
            self.signing_key_file or keys / SIGNING_KEY_NAME,
            self.public_key_file or keys / PUBLIC_KEY_NAME,
            self.content_key_file or keys / CONTENT_KEY_NAME,
        )

    def keys_configured(self) -> bool:
        return any(p is not None for p in (self.signing_key_file, self.public_key_file, self.content_key_file))

    def resolved_witness(self, log_dir: Path) -> Path:
        return self.witness_file if self.witness_file is not None else log_dir / WITNESS_NAME
