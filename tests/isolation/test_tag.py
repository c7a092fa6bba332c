"""The partition tag's text form (bastion.isolation.tag)."""

from __future__ import annotations

import pytest

from bastion.isolation.tag import PartitionTag, TagError

KEY = "0123456789abcdef" * 4
OTHER = "fedcba9876543210" * 4


def test_round_trip() -> None:
    tag = PartitionTag(KEY, 48, 8, 32)
    assert tag.cache_key == KEY  # prefix_cache_scope "tenant": the blocks are keyed by the tenant key
    assert tag.encode() == f"bst2.{KEY}.{KEY}.48.8.32"
    assert PartitionTag.decode(tag.encode()) == tag == PartitionTag(KEY, 48, 8, 32, cache_key=KEY)


def test_a_principal_cache_key_travels_beside_the_tenant_key() -> None:
    tag = PartitionTag(KEY, 48, 8, 32, cache_key=OTHER)
    assert tag.encode() == f"bst2.{KEY}.{OTHER}.48.8.32"
    back = PartitionTag.decode(tag.encode())
    assert back == tag and (back.tenant_key, back.cache_key) == (KEY, OTHER)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        KEY,
        f"bst1.{KEY}.0.0.0",  # the form before cache keys: refused, not read as a tenant-scoped tag
        f"bst2.{KEY}.0.0.0",
        f"bst2.{KEY}.{KEY}.1.2",
        f"bst3.{KEY}.{KEY}.0.0.0",
        f"bst2.{KEY.upper()}.{KEY}.0.0.0",
        f"bst2.{KEY}.{OTHER.upper()}.0.0.0",
        f"bst2.{KEY}.{KEY[:-1]}.0.0.0",
        f"bst2.{KEY}..0.0.0",
        f"bst2.{KEY}.{KEY}.-1.0.0",
        f"bst2.{KEY}.{KEY}.0.0.0.",
        f"bst2.{KEY[:-1]}.{KEY}.0.0.0",
        f"bst2.{KEY}.{KEY}.0.9.8",
        f"bst2.{KEY}.{KEY}.\u0661.0.0",  # ARABIC-INDIC DIGIT ONE: int() reads it, the tag form does not
        f"bst2.{KEY}.{KEY}.0.0.0\n",
    ],
)
def test_malformed_tags_are_refused(text: str | None) -> None:
    with pytest.raises(TagError):
        PartitionTag.decode(text)


def test_fields_are_checked() -> None:
    with pytest.raises(TagError, match="kv_reserved_blocks must not exceed kv_max_blocks"):
        PartitionTag(KEY, 0, 9, 8)
    with pytest.raises(TagError, match="public_tokens"):
        PartitionTag(KEY, -1)
    with pytest.raises(TagError, match="tenant_key"):
        PartitionTag("zz" * 32)
    with pytest.raises(TagError, match="cache_key"):
        PartitionTag(KEY, cache_key="zz" * 32)
    with pytest.raises(TagError, match="cache_key"):
        PartitionTag(KEY, cache_key=KEY.upper())
    assert PartitionTag(KEY, 0, 9, 0).kv_max_blocks == 0  # no cap
