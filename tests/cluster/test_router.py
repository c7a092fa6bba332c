"""The request router's own helpers (bastion.cluster.router), without a cluster; its routing decisions are the
pure functions of test_routing.py and test_admission.py, and live in pool_cases.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bastion.cluster.router import ROUTING_KEY, replica_load, routing_key_of


def _pending(**kwargs: Any) -> Any:
    return SimpleNamespace(kwargs=kwargs)


def test_only_a_32_byte_routing_key_is_taken() -> None:
    key = bytes(range(32))
    assert routing_key_of(_pending(**{ROUTING_KEY: key})) == key
    assert routing_key_of(None) is None
    assert routing_key_of(_pending()) is None
    assert routing_key_of(_pending(**{ROUTING_KEY: key[:31]})) is None
    assert routing_key_of(_pending(**{ROUTING_KEY: key.hex()})) is None  # text is not a key


class _Cache:
    def __init__(self, value: int | None) -> None:
        self.value = value

    def get(self, _replica_id: object) -> int | None:
        return self.value


@pytest.mark.parametrize(
    ("cached", "stats", "load"),
    [
        (3, {"running": 9, "waiting": 9}, 3),  # the handle's own count is the freshest
        (None, {"running": 2, "waiting": 5}, 7),  # else the engine's figures from the routing stats
        (None, {}, 0),
        (None, {"running": "x"}, 0),  # a malformed figure counts as no load, never raises
        (None, None, 0),
    ],
)
def test_a_replicas_load(cached: int | None, stats: dict[str, Any] | None, load: int) -> None:
    router: Any = SimpleNamespace(replica_queue_len_cache=_Cache(cached))
    replica: Any = SimpleNamespace(replica_id="r", routing_stats=stats)
    assert replica_load(router, replica) == load
