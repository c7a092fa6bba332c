"""Fixtures of the cluster tests that need no Ray process: a short private directory and a cluster PKI in it.
The gRPC test harness (tests/grpc/grpc_harness.py) is importable here too: the live pool cases run a server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_util import Pki, make_pki, short_dir

_GRPC_TESTS = str(Path(__file__).resolve().parent.parent / "grpc")
if _GRPC_TESTS not in sys.path:
    sys.path.insert(0, _GRPC_TESTS)


@pytest.fixture
def base() -> Iterator[Path]:
    with short_dir() as d:
        yield d


@pytest.fixture
def pki(base: Path) -> Pki:
    return make_pki(base)
