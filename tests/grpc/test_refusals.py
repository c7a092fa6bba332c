"""Refusal records are coalesced per key and window (issue 15, item 4: audit amplification).

Before: every refused call wrote one fsynced record, so a flood of anonymous calls was a flood of disk
writes (and, with a full disk, a permanent outage). Now a flood from one peer is one full record plus one
counted record per window, and the counts survive a log that takes no records for a while.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
from grpc_harness import make_settings, prompt_request, running_server

from bastion.audit.errors import AuditUnavailable
from bastion.server.refusals import COALESCED, OVERFLOW, RefusalCoalescer
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FakeEngine


class _Log:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.down = False

    async def append(self, kind: str, fields: dict[str, Any]) -> int:
        if self.down:
            raise AuditUnavailable("no space")
        self.records.append(fields)
        return len(self.records)


def _refusal(peer: str = "ipv4:10.0.0.1:1000", method: str = "/bastion.v1.Inference/Generate", **kw: str) -> dict:
    return {
        "request_id": "r",
        "method": method,
        "peer": peer,
        "decision": "deny",
        "event": "authentication_failed",
        "status": "UNAUTHENTICATED",
        "reason": "no credentials",
        **kw,
    }


async def test_one_full_record_per_key_and_window_then_one_count() -> None:
    log = _Log()
    c = RefusalCoalescer(log, window_s=60, max_keys=16)
    for port in range(100):  # one peer address, many source ports
        await c.refused(_refusal(peer=f"ipv4:10.0.0.1:{port}"))
    await c.refused(_refusal(peer="ipv4:10.0.0.2:1"))
    assert len(log.records) == 2  # the first of each peer, in full
    await c.flush()
    coalesced = [r for r in log.records if r.get("reason") == COALESCED]
    assert [(r["peer"], r["count"]) for r in coalesced] == [("ipv4:10.0.0.1", 99)]
    assert coalesced[0]["first_ms"] <= coalesced[0]["last_ms"] and coalesced[0]["event"] == "authentication_failed"
    await c.refused(_refusal())  # a new window: in full again
    assert log.records[-1]["request_id"] == "r"


async def test_keys_beyond_the_cap_count_under_the_overflow_key() -> None:
    log = _Log()
    c = RefusalCoalescer(log, window_s=60, max_keys=3)
    for i in range(50):
        await c.refused(_refusal(peer=f"ipv4:10.0.1.{i}:1"))
        await c.refused(_refusal(peer=f"ipv4:10.0.1.{i}:2"))
    await c.flush()
    assert len(log.records) <= 3 + 3 + 1
    assert sum(r.get("count", 1) for r in log.records) == 100
    assert any(r.get("peer") == OVERFLOW for r in log.records)


async def test_counts_wait_for_a_log_that_takes_no_records() -> None:
    log = _Log()
    c = RefusalCoalescer(log, window_s=60, max_keys=16)
    log.down = True
    for _ in range(10):
        await c.refused(_refusal())
    await c.flush()
    assert log.records == []
    log.down = False
    await c.flush()
    assert [r["count"] for r in log.records] == [10]


async def test_an_anonymous_flood_writes_a_bounded_number_of_records(tmp_path: Path) -> None:
    settings = make_settings(extra={"audit": {"refusal_window_s": 0.5}})
    async with running_server([FakeEngine()], settings=settings) as srv:
        anon = pb_grpc.InferenceStub(srv.channel_for(None))
        segs = sorted(srv.audit_dir.glob("audit-*.jsonl"))
        before = sum(p.stat().st_size for p in segs)

        async def one() -> grpc.StatusCode:
            try:
                await anon.Tokenize(prompt_request(), timeout=5)  # type: ignore[arg-type]
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        codes = [c for _ in range(10) for c in await asyncio.gather(*(one() for _ in range(30)))]
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
        await asyncio.sleep(1.2)  # a window closes: the counts are written while the server runs
        lines = [
            json.loads(line) for p in sorted(srv.audit_dir.glob("audit-*.jsonl")) for line in p.read_text().splitlines()
        ]
        refusals = [r for r in lines if r.get("decision") == "deny"]
        assert sum(r.get("count", 1) for r in refusals) == 300
        assert len(refusals) <= 4, len(refusals)  # one full record, then a count per window
        grown = sum(p.stat().st_size for p in srv.audit_dir.glob("audit-*.jsonl")) - before
        assert grown < 20_000, grown  # 300 full records with their checkpoints would be > 150 kB
