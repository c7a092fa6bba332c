"""Stopping the engine cleanly: vLLM's output handler cancelled first, then the EngineCore given time to tear down.

Seen on `make run` (2026-12-04): after SIGINT the EngineCore took 5–6 s to tear down; vLLM's process manager
SIGKILLed it at its 5 s default, and on every stop (killed or not) vLLM's output handler, still running while
``AsyncLLM.shutdown`` stopped the EngineCore from a thread, logged an EngineDeadError traceback. The real teardown runs
in the e2e tests' server stops; here, what bastion asks of vLLM, in which order (the contract test checks that
``AsyncLLM.shutdown`` takes ``timeout`` and that ``output_handler`` is the task vLLM assigns).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bastion.engine.protocol import ModelInfo
from bastion.engine.vllm.engine import ENGINE_TEARDOWN_S, VllmEngine


class _Llm:
    errored = False
    output_handler: asyncio.Task[None] | None = None

    def __init__(self, unfinished: int = 0) -> None:
        self.shutdowns: list[dict[str, Any]] = []
        self.unfinished = unfinished

    def get_num_unfinished_requests(self) -> int:
        return self.unfinished

    def get_tokenizer(self) -> object:
        return object()

    def shutdown(self, timeout: float | None = None) -> None:
        handler = self.output_handler
        self.shutdowns.append({"timeout": timeout, "handler_done": handler is None or handler.done()})


def _engine(llm: _Llm) -> VllmEngine:
    return VllmEngine(llm, ModelInfo("m", "blake3:" + "0" * 64, 128, "cpu"), figures=None)


def test_shutdown_gives_the_engine_core_its_teardown_time_once() -> None:
    llm = _Llm()
    engine = _engine(llm)
    asyncio.run(engine.shutdown())
    asyncio.run(engine.shutdown())  # a second stop (the server's finally after a signal) asks nothing more
    assert llm.shutdowns == [{"timeout": ENGINE_TEARDOWN_S, "handler_done": True}]
    assert not engine.is_ready()


def test_the_output_handler_is_cancelled_before_the_engine_core_stops() -> None:
    """Attack on the operator's logs: a clean stop must not read as an engine crash."""
    seen: list[str] = []

    async def handler() -> None:
        try:
            await asyncio.Event().wait()  # vLLM's loop reading the EngineCore's outputs
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def run() -> _Llm:
        llm = _Llm()
        llm.output_handler = asyncio.create_task(handler())
        await asyncio.sleep(0)
        await _engine(llm).shutdown()
        return llm

    llm = asyncio.run(run())
    assert seen == ["cancelled"]
    assert llm.shutdowns == [{"timeout": ENGINE_TEARDOWN_S, "handler_done": True}]


def test_a_stop_under_load_leaves_the_handler_to_end_the_streams() -> None:
    """Attack: a replica stopped with streams in flight. Cancelling vLLM's handler first would leave those streams
    waiting forever; it must keep running so that the EngineCore's exit reaches them as an error."""

    async def run() -> tuple[_Llm, bool]:
        llm = _Llm(unfinished=2)
        llm.output_handler = asyncio.create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        await _engine(llm).shutdown()
        running = not llm.output_handler.done()
        llm.output_handler.cancel()
        return llm, running

    llm, running = asyncio.run(run())
    assert running
    assert llm.shutdowns == [{"timeout": ENGINE_TEARDOWN_S, "handler_done": False}]


def test_the_teardown_time_fits_the_deployments_stop_windows() -> None:
    """With the default drain grace (20 s) the teardown time stays inside what deploy/ gives a stop."""
    from bastion.config import Settings

    grace = Settings().server.grace_period_s
    root = Path(__file__).resolve().parents[3] / "deploy"
    unit = (root / "systemd" / "bastion.service").read_text()
    stop_sec = float(unit.split("TimeoutStopSec=", 1)[1].split()[0])
    pod = (root / "kubernetes" / "bastion.yaml").read_text()
    k8s = float(pod.split("terminationGracePeriodSeconds:", 1)[1].split()[0])
    assert ENGINE_TEARDOWN_S > 5.0 and grace + ENGINE_TEARDOWN_S < min(stop_sec, k8s)
