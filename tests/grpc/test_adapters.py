"""LoRA adapters scoped to tenants: the tenant policy's `adapters` globs decide, before existence."""

from __future__ import annotations

import tempfile
from pathlib import Path

import grpc
import pytest
from grpc_harness import collect, make_settings, running_server

from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FakeEngine
from identity import make_identity


def _request(adapter: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model="fake-model", prompt="hello", adapter=adapter, sampling=pb.SamplingParams(max_tokens=1)
    )


async def test_adapters_are_scoped_to_tenants() -> None:
    engine = FakeEngine(adapters=("support-v1", "legal-v1"))
    ident = make_identity(
        Path(tempfile.mkdtemp(prefix="bastion-id-")), tenants={"tenant-a": {"adapters": ["support-*"]}}
    )
    async with running_server([engine], settings=make_settings(identity=ident)) as srv:
        alice, bob = (pb_grpc.InferenceStub(srv.channel_for(w)) for w in ("alice", "bob"))
        await collect(alice.Generate(_request("support-v1"), timeout=5))
        await collect(alice.Generate(_request(""), timeout=5))  # the base model
        refusals = {}
        for who, stub, adapter in (
            ("alice", alice, "legal-v1"),
            ("alice", alice, "support-v9"),
            ("bob", bob, "support-v1"),
            ("bob", bob, "nope"),
            ("alice", alice, "bad/name"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub.Generate(_request(adapter), timeout=5))
            refusals[(who, adapter)] = (err.value.code(), err.value.details())
    assert [r.adapter for r in engine.requests] == ["support-v1", None]
    assert refusals[("alice", "legal-v1")][0] == grpc.StatusCode.PERMISSION_DENIED  # exists, not allowed
    assert refusals[("alice", "support-v9")][0] == grpc.StatusCode.NOT_FOUND  # allowed, does not exist
    # A tenant without adapters learns nothing about which exist: the same answer for both.
    assert refusals[("bob", "support-v1")] == refusals[("bob", "nope")]
    assert refusals[("bob", "nope")][0] == grpc.StatusCode.PERMISSION_DENIED
    code, details = refusals[("alice", "bad/name")]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("adapter:")
