"""The engine process dies under a running server: health turns NOT_SERVING and calls get UNAVAILABLE.

Uses its own server (it destroys the engine), started beside the session's."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import grpc
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc
from conftest import start_server, stop_server


def _descendants(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        kids.extend(int(c) for c in children)
    out = list(kids)
    for k in kids:
        out.extend(_descendants(k))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_engine_death_turns_health_not_serving_and_calls_unavailable(tmp_path: Path) -> None:
    server = start_server(tmp_path / "dying")
    try:
        with server.channel() as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            name = stub.ListModels(pb.ListModelsRequest(), timeout=10).models[0].name
            out = list(
                stub.Generate(
                    pb.GenerateRequest(model=name, prompt="Hi", sampling=pb.SamplingParams(max_tokens=2)), timeout=60
                )
            )
            assert out[-1].usage.completion_tokens == 2
            engine_pids = [
                p for p in _descendants(server.proc.pid) if "EngineCore" in _cmdline(p) or "VLLM" in _cmdline(p)
            ]
            assert engine_pids, "no vLLM engine process found under the server"
            for p in engine_pids:
                os.kill(p, signal.SIGKILL)
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 30
            status = None
            while time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.5)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Generate(pb.GenerateRequest(model=name, prompt="Hi"), timeout=30))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Traceback" not in (info.value.details() or "")
    finally:
        stop_server(server)
    assert server.proc.returncode is not None
