"""Fixtures of the cluster tests: a short private directory and a cluster PKI in it (no Ray process), and
``live_cluster``, the one two-node cluster (token + mutual TLS) of the child pytest process that runs the live
case modules (``test_cluster_cases.py``): started once for all of them, stopped whatever happens. Each case
module's front door joins it as a Ray driver and leaves (``ray.shutdown``) when the module ends; Ray's TLS
variables stay set in that process (Ray's core read them when it loaded; the next driver must find them
unchanged). The gRPC test harness (tests/grpc/grpc_harness.py) is importable here too: the cases run servers.

That child process starts when collection ends (``pytest_collection_finish``), so the live cases run beside the
other test directories — they spend much of their time waiting on Ray, with a core idle — and
``test_the_live_cluster_cases`` runs last before the e2e tests, where it waits for the child and asserts that
every case passed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_util import BACKGROUND, LIVE_CASES, Cluster, Pki, make_pki, running_cluster, short_dir, start_cases

_GRPC_TESTS = str(Path(__file__).resolve().parent.parent / "grpc")
if _GRPC_TESTS not in sys.path:
    sys.path.insert(0, _GRPC_TESTS)


LIVE_TEST = "test_cluster_cases.py::test_the_live_cluster_cases"
HERE = Path(__file__).resolve().parent


def _live_item(items: list[pytest.Item]) -> pytest.Item | None:
    return next((it for it in items if it.nodeid.endswith(LIVE_TEST)), None)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The live cases' test waits for its child process: it goes last before the e2e tests (which the e2e
    conftest has already sorted last)."""
    live = _live_item(items)
    if live is None:
        return
    items.remove(live)
    e2e = next((i for i, it in enumerate(items) if "e2e" in Path(str(it.path)).parts), len(items))
    items.insert(e2e, live)


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or _live_item(session.items) is None or BACKGROUND:
        return
    BACKGROUND["live"] = start_cases([HERE / f for f in LIVE_CASES])


def pytest_sessionfinish(session: pytest.Session) -> None:
    bg = BACKGROUND.pop("live", None)
    if bg is not None and bg.proc.poll() is None:  # started, but its test did not wait for it (deselected, -x)
        bg.proc.terminate()
        bg.proc.wait(timeout=60)


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
