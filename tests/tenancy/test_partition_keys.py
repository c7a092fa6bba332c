"""Identity-derived prefix-cache partition keys: stable per tenant, unrelated across tenants and secrets."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.tenancy.partition import PartitionKeys, load_or_create


def test_salts_are_stable_per_tenant_and_differ_across_tenants_and_secrets() -> None:
    k1, k2 = PartitionKeys(b"\x01" * 32), PartitionKeys(b"\x02" * 32)
    assert k1.salt_for("a") == PartitionKeys(b"\x01" * 32).salt_for("a")
    assert len(k1.salt_for("a")) == 64 and int(k1.salt_for("a"), 16) >= 0
    assert k1.salt_for("a") != k1.salt_for("b") and k1.salt_for("a") != k2.salt_for("a")
    assert k1.salt_for("ab") != k1.salt_for("a") and k1.salt_for("") != k1.salt_for("\x00")


def test_secret_file_created_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "partition.key"
    with pytest.raises(ConfigError, match="cannot read"):
        load_or_create(path, create=False)
    secret = load_or_create(path, create=True)
    assert len(secret) == 32 and load_or_create(path, create=True) == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="group or others"):
        load_or_create(path, create=False)
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        load_or_create(path, create=False)
