"""The engine's figures (bastion.engine.vllm.figures): written by the scheduler in place of vLLM's statistics, read
by the server for its metrics and routing stats."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.request import Request, RequestStatus

from bastion.engine.process import EngineProcessEnv
from bastion.engine.vllm import offline, stats_scheduler
from bastion.engine.vllm.figures import read_figures, stats_file
from bastion.engine.vllm.scheduler import TenantScheduler
from bastion.engine.vllm.stats_scheduler import AsyncStatsScheduler, StatsScheduler
from bastion.isolation.tag import PartitionTag

BLOCK = 16
_ids = itertools.count()
_tokens = itertools.count(1000)


@pytest.fixture
def stats_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory the server names in the contract the EngineCore inherits."""
    d = tmp_path / "stats"
    d.mkdir()
    monkeypatch.setenv(*EngineProcessEnv(stats_dir=d).to_env().popitem())
    return d


def _request(n_tokens: int, salt: str | None = None) -> Request:
    init_none_hash(sha256)
    ids = [next(_tokens) for _ in range(n_tokens)]
    return Request(
        f"r{next(_ids)}",
        ids,
        SamplingParams(max_tokens=64),
        None,
        cache_salt=salt,
        block_hasher=get_request_block_hasher(BLOCK, sha256),
    )


def _written(stats_dir: Path) -> dict:
    """The figures, without the model's name (checked on its own)."""
    (path,) = stats_dir.glob("*.json")
    figures = json.loads(path.read_text())
    del figures["model"]
    return figures


def test_the_file_is_named_for_the_model_inside_the_directory(stats_dir: Path) -> None:
    s = offline.make_scheduler(21, StatsScheduler, block_size=BLOCK)
    name = s.vllm_config.model_config.served_model_name  # here the tiny model's path: it has "/" in it
    assert "/" in name
    s.add_request(_request(16))
    offline.step(s)
    (path,) = stats_dir.iterdir()
    assert path == stats_file(stats_dir, name) and path.parent == stats_dir
    assert json.loads(path.read_text())["model"] == name


@pytest.mark.parametrize("cls", [StatsScheduler, AsyncStatsScheduler])
def test_figures_follow_the_engine_and_an_idle_engine_reports_zeros_at_once(
    cls: type, stats_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_scheduler, "INTERVAL_S", 3600.0)  # after the first write, none is due for an hour
    s = offline.make_scheduler(21, cls, block_size=BLOCK, max_num_seqs=2)  # 20 usable blocks
    reqs = [_request(64) for _ in range(3)]
    for r in reqs:
        s.add_request(r)
    offline.step(s)
    # two running (max_num_seqs), one waiting, 8 of 20 blocks: vLLM's own counts and usage
    assert _written(stats_dir) == {"running": 2, "waiting": 1, "kv_usage": s.get_kv_cache_usage()}
    assert _written(stats_dir)["kv_usage"] == pytest.approx(8 / 20)

    # Within the interval nothing is rewritten, however many steps and aborts...
    busy = _written(stats_dir)
    s.finish_requests([reqs[0].request_id], RequestStatus.FINISHED_ABORTED)
    offline.step(s)
    offline.step(s)
    assert _written(stats_dir) == busy
    # ...except when the engine runs out of work: an abort with nothing else queued writes zeros at once.
    s.finish_requests([r.request_id for r in reqs[1:]], RequestStatus.FINISHED_ABORTED)
    assert _written(stats_dir) == {"running": 0, "waiting": 0, "kv_usage": 0.0}


def test_tenant_scheduler_writes_its_ledger_beside_the_engine_figures(stats_dir: Path) -> None:
    s = offline.make_scheduler(21, TenantScheduler, block_size=BLOCK)
    key = "a" * 64
    s.add_request(_request(48, PartitionTag(key, 0, 4, 8).encode()))
    offline.step(s)
    written = _written(stats_dir)
    assert (written["running"], written["waiting"]) == (1, 0)
    assert written["tenants"] == s.kv_budget_snapshot()
    assert written["tenants"][key]["held"] == 3 and written["tenants"][key]["reserved"] == 4


def test_without_a_stats_dir_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(*EngineProcessEnv().to_env().popitem())
    monkeypatch.chdir(tmp_path)
    s = offline.make_scheduler(21, StatsScheduler, block_size=BLOCK)
    s.add_request(_request(16))
    offline.step(s)
    assert s._figures_file is None and list(tmp_path.iterdir()) == []


def test_read_figures(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    assert read_figures(None, 3).extra == {"unfinished": 3.0}
    missing = read_figures(path, 2)
    assert (missing.running, missing.waiting, missing.kv_usage, missing.extra) == (0, 0, 0.0, {"unfinished": 2.0})
    path.write_text(json.dumps({"running": 4, "waiting": 1, "kv_usage": 0.5, "tenants": {}}))
    got = read_figures(path, 5)
    assert (got.running, got.waiting, got.kv_usage, got.extra) == (4, 1, 0.5, {"unfinished": 5.0})


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"running": 1, "waiting": 0}),  # no kv_usage
        json.dumps({"running": -1, "waiting": 0, "kv_usage": 0.1}),
        json.dumps({"running": 1.5, "waiting": 0, "kv_usage": 0.1}),
        json.dumps({"running": True, "waiting": 0, "kv_usage": 0.1}),
        json.dumps({"running": 1, "waiting": 0, "kv_usage": 1.5}),
        '{"running": 1, "waiting": 0, "kv_usage": NaN}',
        json.dumps({"running": 1, "waiting": 0, "kv_usage": "0.1"}),
    ],
)
def test_figures_that_do_not_parse_read_as_zeros(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    got = read_figures(path, 1)
    assert (got.running, got.waiting, got.kv_usage) == (0, 0, 0.0)


def test_an_idle_state_that_could_not_be_written_is_written_at_the_next_chance(
    stats_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_scheduler, "INTERVAL_S", 3600.0)
    s = offline.make_scheduler(21, StatsScheduler, block_size=BLOCK)
    r = _request(32)
    s.add_request(r)
    offline.step(s)
    assert _written(stats_dir)["running"] == 1
    real = stats_scheduler.atomic_write_text

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stats_scheduler, "atomic_write_text", full_disk)
    s.finish_requests([r.request_id], RequestStatus.FINISHED_ABORTED)  # the idle write fails: scheduling goes on
    assert _written(stats_dir)["running"] == 1
    monkeypatch.setattr(stats_scheduler, "atomic_write_text", real)
    s.finish_requests([], RequestStatus.FINISHED_ABORTED)  # the next chance, still within the interval
    assert _written(stats_dir) == {"running": 0, "waiting": 0, "kv_usage": 0.0}
