"""Fixtures of the cluster tests: a short private directory and a cluster PKI in it (no Ray process), and
``live_cluster``, the one two-node cluster (token + mutual TLS) of the child pytest process that runs the live
case modules (``test_cluster_cases.py``): started once for all of them, stopped whatever happens. Each case
module's front door joins it as a Ray driver and leaves (``ray.shutdown``) when the module ends; Ray's TLS
variables stay set in that process (Ray's core read them when it loaded; the next driver must find them
unchanged). The gRPC test harness (tests/grpc/grpc_harness.py) is importable here too: the cases run servers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_util import Cluster, Pki, make_pki, running_cluster, short_dir

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


@pytest.fixture(scope="session")
def live_cluster() -> Iterator[Cluster]:
    with running_cluster() as c:
        yield c
