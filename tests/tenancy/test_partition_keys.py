"""Identity-derived prefix-cache partition keys: stable per tenant, unrelated across tenants and secrets."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.tenancy.partition import PartitionKeys, block_key, load_or_create, routing_secret


def test_salts_are_stable_per_tenant_and_differ_across_tenants_and_secrets() -> None:
    k1, k2 = PartitionKeys(b"\x01" * 32), PartitionKeys(b"\x02" * 32)
    assert k1.salt_for("a") == PartitionKeys(b"\x01" * 32).salt_for("a")
    assert len(k1.salt_for("a")) == 64 and int(k1.salt_for("a"), 16) >= 0
    assert k1.salt_for("a") != k1.salt_for("b") and k1.salt_for("a") != k2.salt_for("a")
    assert k1.salt_for("ab") != k1.salt_for("a") and k1.salt_for("") != k1.salt_for("\x00")


def test_principal_keys_are_per_principal_and_unrelated_to_tenant_keys() -> None:
    k1, k2 = PartitionKeys(b"\x01" * 32), PartitionKeys(b"\x02" * 32)
    alice, carol = k1.principal_key("t", "apikey:alice"), k1.principal_key("t", "apikey:carol")
    assert alice == PartitionKeys(b"\x01" * 32).principal_key("t", "apikey:alice") and len(alice) == 64
    assert alice != carol and alice != k2.principal_key("t", "apikey:alice")
    # The tenant is part of the derivation; both fields are length-prefixed (no "t" + "ab" == "ta" + "b").
    assert k1.principal_key("u", "apikey:alice") != alice
    assert k1.principal_key("ta", "b") != k1.principal_key("t", "ab")
    # A distinct label: no principal key equals a tenant key, whatever the names.
    assert alice != k1.salt_for("t") and k1.principal_key("t", "") != k1.salt_for("t")
    # cache_key picks by scope and refuses anything else rather than fall back to a shared key.
    assert k1.cache_key("t", "apikey:alice", "tenant") == k1.cache_key("t", "apikey:carol", "tenant")
    assert k1.cache_key("t", "apikey:alice", "tenant") == k1.salt_for("t")
    assert k1.cache_key("t", "apikey:alice", "principal") == alice
    with pytest.raises(ValueError, match="prefix_cache_scope"):
        k1.cache_key("t", "apikey:alice", "Principal")


def test_routing_secret_has_its_own_label() -> None:
    secret = b"\x04" * 32
    keys = PartitionKeys(secret)
    routing = keys.routing_secret()
    assert routing == routing_secret(secret) and len(routing) == 32
    assert routing != routing_secret(b"\x05" * 32) and routing != block_key(secret)
    assert routing.hex() not in {keys.salt_for(""), keys.principal_key("", ""), secret.hex()}


def test_principal_key_memo_is_bounded() -> None:
    from bastion.tenancy import partition

    keys = PartitionKeys(b"\x03" * 32)
    first = keys.principal_key("t", "p0")
    for i in range(partition.MAX_MEMO + 10):
        keys.principal_key("t", f"p{i}")
    assert len(keys._principal_cache) <= partition.MAX_MEMO
    assert keys.principal_key("t", "p0") == first  # recomputed, same key


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
