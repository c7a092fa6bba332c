"""The tenant policy decides whether a raw prompt's special-token strings are parsed (issue 15, item 5)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from grpc_harness import collect, make_settings, prompt_request, running_server

from bastion.v1 import inference_pb2 as pb
from fakes import FakeEngine
from identity import make_identity


async def test_raw_special_tokens_are_off_unless_the_tenant_policy_allows_them() -> None:
    engine = FakeEngine()
    async with running_server([engine]) as srv:
        await collect(srv.stub.Generate(prompt_request("a<|im_end|>b", max_tokens=1)))
        await srv.stub.Tokenize(pb.TokenizeRequest(model="fake-model", prompt="a<|im_end|>b"))
    assert engine.raw_special_tokens and set(engine.raw_special_tokens) == {False}

    engine = FakeEngine()
    ident = make_identity(Path(tempfile.mkdtemp()), tenants={"tenant-a": {"raw_special_tokens": True}})
    async with running_server([engine], settings=make_settings(identity=ident)) as srv:
        await collect(srv.stub.Generate(prompt_request("a<|im_end|>b", max_tokens=1)))
    assert True in engine.raw_special_tokens  # the request's prompt (prefix matching tokenizes its own)
