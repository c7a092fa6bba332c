"""The partition tag's text form (bastion.isolation.tag)."""

from __future__ import annotations

import pytest

from bastion.isolation.tag import PartitionTag, TagError

KEY = "0123456789abcdef" * 4


def test_round_trip() -> None:
    tag = PartitionTag(KEY, 48, 8, 32)
    assert tag.encode() == f"bst1.{KEY}.48.8.32"
    assert PartitionTag.decode(tag.encode()) == tag


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        KEY,
        f"bst1.{KEY}.1.2",
        f"bst2.{KEY}.0.0.0",
        f"bst1.{KEY.upper()}.0.0.0",
        f"bst1.{KEY}.-1.0.0",
        f"bst1.{KEY}.0.0.0.",
        f"bst1.{KEY[:-1]}.0.0.0",
        f"bst1.{KEY}.0.9.8",
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
    assert PartitionTag(KEY, 0, 9, 0).kv_max_blocks == 0  # no cap
