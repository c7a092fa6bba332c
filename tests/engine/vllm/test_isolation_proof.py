"""The isolation proof from inside vLLM's processes (bastion.engine.vllm.proof), without a model: the
EngineCore side on real vLLM schedulers (offline), the front end's side on a stand-in for AsyncLLM. The real
engine's proof is checked end to end by tests/e2e (every e2e server asks for isolation and refuses to start
without the proof)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from vllm.v1.core.sched.scheduler import Scheduler

from bastion.engine.vllm import offline
from bastion.engine.vllm.block_hasher import make_request_block_hasher
from bastion.engine.vllm.plugin import register
from bastion.engine.vllm.proof import PROOF_METHOD, WORKER_METHOD, core_proof, is_keyed_hasher, prove
from bastion.engine.vllm.scheduler import TenantScheduler
from bastion.isolation.proof import IsolationProof
from bastion.native import BlockKeyer


def _core(scheduler_cls: type[Scheduler], keyed: bool, workers: list[Any]) -> Any:
    hasher = make_request_block_hasher(16, BlockKeyer(b"k" * 32)) if keyed else (lambda request: [])
    return SimpleNamespace(
        scheduler=offline.make_scheduler(64, scheduler_cls, block_size=16),
        request_block_hasher=hasher,
        collective_rpc=lambda method: workers if method == WORKER_METHOD else [],
    )


def test_an_enginecore_with_everything_installed_proves_all_three() -> None:
    register()  # what vLLM does in each of its processes
    assert core_proof(_core(TenantScheduler, True, [True, True])) == {
        "plugin": True,
        "block_hasher": True,
        "tenant_scheduler": True,
    }


@pytest.mark.parametrize(
    ("scheduler", "keyed", "workers", "missing"),
    [
        (Scheduler, True, [True], "tenant_scheduler"),  # vLLM's own scheduler: no tenant budgets
        (TenantScheduler, False, [True], "block_hasher"),  # vLLM's hasher: the key file was not given
        (TenantScheduler, True, [True, False], "plugin"),  # one worker without the plugin
        (TenantScheduler, True, [], "plugin"),  # no worker answered
    ],
)
def test_anything_missing_in_the_enginecore_or_a_worker_is_not_proven(
    scheduler: type[Scheduler], keyed: bool, workers: list[Any], missing: str
) -> None:
    register()
    got = core_proof(_core(scheduler, keyed, workers))
    assert [k for k, ok in got.items() if not ok] == [missing]


def test_only_bastions_keyed_hasher_counts() -> None:
    assert is_keyed_hasher(make_request_block_hasher(16, BlockKeyer(b"k" * 32)))
    impostor = lambda request: []  # noqa: E731 - a hasher that merely has the right shape
    assert not is_keyed_hasher(impostor) and not is_keyed_hasher(None)


def test_the_plugin_adds_the_proof_to_vllms_enginecore_and_workers() -> None:
    from vllm.v1.engine.core import EngineCore
    from vllm.v1.worker.worker_base import WorkerBase

    register()
    assert getattr(EngineCore, PROOF_METHOD) is core_proof
    assert getattr(WorkerBase, WORKER_METHOD)(object()) is True


class _Client:
    def __init__(self, answer: Any = None, error: BaseException | None = None, delay: float = 0.0) -> None:
        self.answer, self.error, self.delay = answer, error, delay
        self.calls: list[str] = []

    async def call_utility_async(self, method: str, *args: Any) -> Any:
        self.calls.append(method)
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.answer


async def test_the_front_end_takes_only_true_as_proven() -> None:
    client = _Client({"plugin": True, "block_hasher": 1, "tenant_scheduler": "yes", "extra": True})
    proof = await prove(SimpleNamespace(engine_core=client))
    assert client.calls == [PROOF_METHOD]
    assert proof == IsolationProof(plugin=True) and proof.missing() == ["block_hasher", "tenant_scheduler"]


@pytest.mark.parametrize(
    "client",
    [
        _Client(error=AttributeError("EngineCore has no bastion_isolation_proof")),  # no plugin in the EngineCore
        _Client(answer=None),
        _Client(answer=[True, True, True]),
        _Client(answer={"plugin": True}, delay=5.0),  # no answer in time
    ],
)
async def test_an_engine_that_cannot_answer_proves_nothing(client: _Client) -> None:
    proof = await prove(SimpleNamespace(engine_core=client), timeout=0.5)
    assert proof.missing() == ["plugin", "block_hasher", "tenant_scheduler"]
