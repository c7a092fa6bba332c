"""SIGTERM on the live server: NOT_SERVING, in-flight streams drain, new calls refused, exit 0.

Marked terminal_server: it ends the session's server, so it runs last (see conftest)."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion.v1 import inference_pb2 as pb


@pytest.mark.terminal_server
def test_sigterm_drains_in_flight_streams_and_exits_zero(live_server, stub, model_name) -> None:
    results: dict[str, object] = {}

    def stream() -> None:
        try:
            msgs = list(
                stub.Generate(
                    pb.GenerateRequest(
                        model=model_name,
                        prompt="Once upon a time",
                        sampling=pb.SamplingParams(max_tokens=64, temperature=0.0),
                    ),
                    timeout=120,
                )
            )
            results["msgs"] = msgs
        except grpc.RpcError as err:  # pragma: no cover - reported by the assertion below
            results["error"] = (err.code(), err.details())

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(1.5)  # the stream is running
    live_server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with live_server.channel() as ch:
        try:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        except grpc.RpcError as err:
            # The listener may already refuse new connections; that also means no new work.
            assert err.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as info:
            list(pb_grpc_stub(ch).Generate(pb.GenerateRequest(model=model_name, prompt="new"), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    t.join(timeout=120)
    assert "error" not in results, results.get("error")
    msgs = results["msgs"]
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH  # drained to completion, not aborted
    assert msgs[-1].usage.completion_tokens == 64
    assert live_server.proc.wait(timeout=60) == 0


def pb_grpc_stub(ch: grpc.Channel):
    from bastion.v1 import inference_pb2_grpc

    return inference_pb2_grpc.InferenceStub(ch)


@pytest.mark.terminal_server
def test_a_forged_audit_tail_past_the_witness_refuses_the_next_start(live_server) -> None:
    """Red-team (issue 14, part 1) on the session's real server, once it has stopped: keep its log, append
    records made with AuditChain.recover + seal (no key needed) past the witnessed checkpoint, restart. The
    server must refuse to start (exit 1, the reason in its log), never sign over the forgery."""
    import json
    import subprocess
    import sys

    from bastion.native import AuditChain

    if live_server.proc.poll() is None:
        live_server.proc.send_signal(signal.SIGTERM)
    assert live_server.proc.wait(timeout=90) == 0
    audit = live_server.audit_dir
    witness = json.loads((audit / "witness.json").read_text())
    chain, info = AuditChain.recover(audit)
    forged = {"request_id": "forged", "principal": "apikey:nobody", "tenant": "acme", "status": "OK"}
    with (audit / f"audit-{info['segment']:08d}.jsonl").open("ab") as f:
        for _ in range(3):
            f.write(chain.seal("request", json.dumps(forged).encode(), 1)[1])
    assert chain.next_seq > witness["seq"] + 1
    config = live_server.server.config_path
    done = subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "unsigned records after the last checkpoint" in done.stderr and "bastion audit resume" in done.stderr
    assert json.loads((audit / "witness.json").read_text()) == witness  # the witness was not moved
