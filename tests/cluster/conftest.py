"""Fixtures of the cluster tests that need no Ray process: a short private directory and a cluster PKI in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_util import Pki, make_pki, short_dir


@pytest.fixture
def base() -> Iterator[Path]:
    with short_dir() as d:
        yield d


@pytest.fixture
def pki(base: Path) -> Pki:
    return make_pki(base)
