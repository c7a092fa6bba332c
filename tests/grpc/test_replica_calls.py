"""What a call served by a Serve replica looks like to its client and in the audit log (bastion.cluster.pool
maps a lost replica to ``Unavailable`` with a retry delay; the replica names itself on the stream's first
output). The engine here is the fake one, in process, standing in for ``ReplicaEngine``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_harness import collect, prompt_request, running_server

from bastion.cluster.pool import REPLICA_RETRY_AFTER_S, REPLICA_UNAVAILABLE, map_error
from bastion.engine.protocol import EngineOutput, EngineRequest
from bastion.errors import Unavailable
from fakes import FakeEngine


def _request_records(audit_dir: Path) -> list[dict[str, Any]]:
    out = []
    for seg in sorted(audit_dir.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line]
    return [r for r in out if r["kind"] == "request"]


class NamedReplica(FakeEngine):
    """A fake engine whose first output names the replica, as ``EngineReplica.generate`` does."""

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:  # type: ignore[override]
        first = True
        async for out in super().generate(request):
            yield dataclasses.replace(out, replica="replica-7") if first else out
            first = False


def _lost_replica() -> Unavailable:
    from ray.exceptions import RayActorError

    err = map_error(RayActorError())
    assert isinstance(err, Unavailable)
    return err


async def test_a_call_that_lost_its_replica_ends_unavailable_with_retry_info() -> None:
    engine = FakeEngine(fail_after=2)
    engine.fail_with = _lost_replica()
    async with running_server([engine]) as srv:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Generate(prompt_request(max_tokens=10)))
        audit_dir = srv.audit_dir
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == REPLICA_UNAVAILABLE
    status = status_pb2.Status.FromString(dict(info.value.trailing_metadata())["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0] and status.details[0].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == int(REPLICA_RETRY_AFTER_S * 1000)
    (rec,) = _request_records(audit_dir)
    assert rec["status"] == "UNAVAILABLE" and rec["reason"] == "replica call failed: RayActorError"


async def test_an_engine_that_is_merely_not_ready_sends_no_retry_info() -> None:
    engine = FakeEngine(fail_after=1)
    engine.fail_with = Unavailable("engine is dead")
    async with running_server([engine]) as srv:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Generate(prompt_request(max_tokens=10)))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "grpc-status-details-bin" not in dict(info.value.trailing_metadata())


async def test_the_request_record_names_the_replica_that_ran_it() -> None:
    async with running_server([NamedReplica()]) as srv:
        await collect(srv.stub.Generate(prompt_request(max_tokens=3)))
        audit_dir = srv.audit_dir
    (rec,) = _request_records(audit_dir)
    assert rec["status"] == "OK" and rec["replica"] == "replica-7"


async def test_a_call_in_one_process_names_no_replica() -> None:
    async with running_server([FakeEngine()]) as srv:
        await collect(srv.stub.Generate(prompt_request(max_tokens=3)))
        audit_dir = srv.audit_dir
    (rec,) = _request_records(audit_dir)
    assert "replica" not in rec
