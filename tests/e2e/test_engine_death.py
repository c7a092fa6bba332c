"""The engine process dies under a running server: health turns NOT_SERVING and calls get UNAVAILABLE.

Uses its own server (it destroys the engine), started beside the session's. That server takes the default,
production start path (torch.compile, the model in a worker process of its own) — the one e2e server that
does; the others use ``model.fast_start`` — so this module also checks that path serves."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc
from conftest import DEFAULT_MODEL_TOML, DEFAULT_PATH_TOML, LiveServer, stop_server


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


@pytest.fixture(scope="module")
def server(default_path_server: LiveServer) -> LiveServer:
    """The session's default-path server (launched at collection, so it boots while other tests run)."""
    assert DEFAULT_PATH_TOML != DEFAULT_MODEL_TOML and "fast_start" not in DEFAULT_PATH_TOML
    return default_path_server


def test_the_default_start_path_compiles_and_runs_the_model_in_a_worker(server: LiveServer) -> None:
    log = server.log_text()
    assert "Enforce eager set" not in log and "VLLM_ENABLE_V1_MULTIPROCESSING is set to False" not in log
    assert "the EngineCore is forked from the preloaded process" in log and "is spawned, not forked" not in log
    # The plugin ran in the front end, the EngineCore and the worker process.
    pids = {int(p.name.split("-")[1]) for p in server.marker_dir.glob("plugin-*")}
    assert server.proc.pid in pids and len(pids) >= 3, f"plugin ran only in {pids}"
    with server.channel() as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        req = pb.GenerateRequest(
            model=stub.ListModels(pb.ListModelsRequest(), timeout=10).models[0].name,
            sampling=pb.SamplingParams(max_tokens=16, temperature=0.0),
            conversation=pb.Conversation(
                messages=[pb.ChatMessage(role=pb.ROLE_USER, content="What is the capital of France?")]
            ),
        )
        assert "Paris" in "".join(m.text for m in stub.Generate(req, timeout=120))


def test_engine_death_turns_health_not_serving_and_calls_unavailable(server: LiveServer) -> None:
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
