"""A server whose audit disk fills (issue 15, item 4), on a small tmpfs.

Before: the first ENOSPC failed the audit log for good and health stayed NOT_SERVING until a restart.
Now: below the reserve the server takes no new calls (UNAVAILABLE, health NOT_SERVING) while their refusals
are still recorded; with no space at all the log suspends; once space is freed health returns to SERVING,
calls are served, the chain continues and verifies, and every refused call is accounted for.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
from grpc_harness import collect, make_settings, prompt_request, running_server
from grpc_health.v1 import health_pb2

from bastion.native import audit_verify_dir
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FakeEngine
from small_fs import fill, small_fs

MIB = 1 << 20


def _records(audit_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for p in sorted(audit_dir.glob("audit-*.jsonl")) for x in p.read_text().splitlines()]


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await (collect(call) if hasattr(call, "__aiter__") else call)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_a_full_audit_disk_is_an_outage_only_while_it_is_full(tmp_path: Path) -> None:
    with small_fs(tmp_path / "fs", 6 * MIB) as fs:
        audit = {
            "dir": str(fs / "audit"),
            "min_free_bytes": 2 * MIB,
            "alarm_free_bytes": 3 * MIB,
            "refusal_window_s": 0.3,
        }
        settings = make_settings(extra={"audit": audit})
        async with running_server([FakeEngine()], settings=settings) as srv:
            stub = pb_grpc.InferenceStub(srv.channel)
            assert await _code(stub.Generate(prompt_request(max_tokens=2), timeout=5)) == grpc.StatusCode.OK

            fill(fs, leave=MIB)  # below the reserve
            await srv.wait_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            # Not ready, but alive: a restart would not free the disk, so a liveness probe must not kill it.
            assert await srv.health_status("readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await srv.health_status("liveness") == health_pb2.HealthCheckResponse.SERVING
            refused = 0
            for _ in range(5):
                assert (
                    await _code(stub.Generate(prompt_request(max_tokens=2), timeout=5)) == grpc.StatusCode.UNAVAILABLE
                )
                refused += 1

            fill(fs, name="rest")  # no space at all
            for _ in range(12):  # a new window each time: its first refusal needs a record, which cannot be written
                await asyncio.sleep(0.35)
                assert (
                    await _code(stub.Generate(prompt_request(max_tokens=2), timeout=5)) == grpc.StatusCode.UNAVAILABLE
                )
                refused += 1

            for p in (fs / "filler", fs / "rest"):
                p.unlink()
            await srv.wait_health(health_pb2.HealthCheckResponse.SERVING, timeout=10)
            assert await _code(stub.Generate(prompt_request(max_tokens=2), timeout=5)) == grpc.StatusCode.OK
        recs = _records(srv.audit_dir)
        served = [r for r in recs if r["kind"] == "request" and r.get("status") == "OK"]
        assert len(served) == 2  # before and after: nothing acknowledged was lost
        unavailable = [r for r in recs if r.get("event") == "audit_unavailable"]
        assert sum(r.get("count", 1) for r in unavailable) == refused  # every refused call is accounted for
        levels = [r["level"] for r in recs if r.get("event") == "audit_disk"]
        assert "low" in levels and levels[-1] == "ok", levels
        assert [r["event"] for r in recs if r.get("principal") == "bastion:audit"].count("audit_resumed") == 1
        report = audit_verify_dir(str(srv.audit_dir), str(srv.audit_dir / "keys" / "signing.pub"))
        assert report["problem"] is None, report["problem"]
