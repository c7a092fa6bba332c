"""Generate/Tokenize/ListModels happy paths over a real in-process gRPC server with FakeEngine."""

from __future__ import annotations

import grpc
from grpc_harness import collect, make_settings, prompt_request, running_server

from bastion.v1 import inference_pb2 as pb
from fakes import FAKE_DIGEST, FakeEngine


async def test_stream_deltas_usage_and_request_id() -> None:
    engine = FakeEngine()
    async with running_server([engine]) as srv:
        call = srv.stub.Generate(prompt_request("hello", max_tokens=4))
        msgs = await collect(call)
        metadata = dict(await call.initial_metadata())
    rid = metadata["x-request-id"]
    assert len(rid) == 32 and int(rid, 16) >= 0
    assert [m.text for m in msgs] == ["w0 ", "w1 ", "w2 ", "w3 "]
    assert [list(m.token_ids) for m in msgs] == [[1000], [1001], [1002], [1003]]
    assert all(m.request_id == rid for m in msgs)
    assert [m.model_digest for m in msgs] == [FAKE_DIGEST, "", "", FAKE_DIGEST]
    assert [m.finish_reason for m in msgs] == [0, 0, 0, pb.FINISH_REASON_LENGTH]
    assert not any(m.HasField("usage") for m in msgs[:-1])
    assert msgs[-1].usage == pb.Usage(prompt_tokens=5, completion_tokens=4, cached_prompt_tokens=2)
    # The engine saw the server's id, the tokenized prompt and validated sampling.
    (req,) = engine.requests
    assert req.request_id == rid
    assert req.prompt_token_ids == tuple(b"hello")
    assert req.sampling.max_tokens == 4
    assert engine.aborted == [] and engine.closed == [rid]


async def test_stream_interval_sends_the_same_tokens_in_fewer_messages() -> None:
    """sampling.stream_interval reaches the engine; its grouped outputs stream as they come: the first token at
    once, then four per message, the rest with the final message (usage and digest as without it)."""
    engine = FakeEngine()
    async with running_server([engine]) as srv:
        req = prompt_request("hello", max_tokens=10)
        req.sampling.stream_interval = 4
        msgs = await collect(srv.stub.Generate(req))
        plain = await collect(srv.stub.Generate(prompt_request("hello", max_tokens=10)))
    assert [len(m.token_ids) for m in msgs] == [1, 4, 4, 1]
    assert [t for m in msgs for t in m.token_ids] == [t for m in plain for t in m.token_ids]
    assert "".join(m.text for m in msgs) == "".join(m.text for m in plain)
    assert [m.model_digest for m in msgs] == [FAKE_DIGEST, "", "", FAKE_DIGEST]
    assert msgs[-1].usage == plain[-1].usage and msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert [r.sampling.stream_interval for r in engine.requests] == [4, 1]


async def test_request_ids_are_unique_and_client_id_is_only_a_label() -> None:
    engine = FakeEngine()
    async with running_server([engine]) as srv:
        req = prompt_request(max_tokens=1)
        req.client_request_id = "client-1"
        a = await collect(srv.stub.Generate(req))
        b = await collect(srv.stub.Generate(req))
    assert a[0].request_id != b[0].request_id
    assert "client-1" not in (a[0].request_id, b[0].request_id)


async def test_conversation_stop_and_logprobs() -> None:
    engine = FakeEngine(stop_after=2)
    async with running_server([engine]) as srv:
        req = pb.GenerateRequest(model="fake-model", sampling=pb.SamplingParams(max_tokens=10, logprobs=2))
        req.conversation.messages.add(role=pb.ROLE_SYSTEM, content="sys")
        req.conversation.messages.add(role=pb.ROLE_USER, content="hi")
        msgs = await collect(srv.stub.Generate(req))
    assert msgs[-1].finish_reason == pb.FINISH_REASON_STOP
    assert msgs[-1].usage.completion_tokens == 2
    assert engine.requests[0].prompt_token_ids == tuple(b"<system>sys<user>hi<assistant>")
    lp = msgs[0].logprobs[0]
    assert lp.sampled.token_id == 1000 and [t.token_id for t in lp.top] == [1000, 1001]


async def test_prompt_logprobs_come_on_the_first_message_with_token_texts() -> None:
    engine = FakeEngine()
    refused = []
    async with running_server([engine], settings=make_settings(limits={"max_prompt_logprobs_tokens": 4})) as srv:
        msgs = await collect(srv.stub.Generate(prompt_request("abc", max_tokens=2, prompt_logprobs=1, logprobs=1)))
        for prompt, k in (("abc", 21), ("abcde", 1)):  # over the alternatives' limit; a prompt over 4 tokens
            try:
                await collect(srv.stub.Generate(prompt_request(prompt, max_tokens=2, prompt_logprobs=k)))
            except grpc.aio.AioRpcError as exc:
                refused.append(f"{exc.code().name} {exc.details()}")
    assert engine.requests[0].sampling.prompt_logprobs == 1
    first = msgs[0].prompt_logprobs
    assert [(e.sampled.token_id, e.sampled.token) for e in first] == [(98, "b"), (99, "c")]  # after the first token
    assert [t.token for t in first[0].top] == ["b"] and not msgs[1].prompt_logprobs
    assert msgs[0].logprobs[0].sampled.token == "w0 "
    assert refused == [
        "INVALID_ARGUMENT sampling.prompt_logprobs: must be between 0 and 20",
        "INVALID_ARGUMENT sampling.prompt_logprobs: only for prompts of at most 4 tokens",
    ]
    assert len(engine.requests) == 1  # neither refused request reached the engine


async def test_default_max_tokens_shortened_to_fit_context() -> None:
    engine = FakeEngine(max_context=20)
    async with running_server([engine]) as srv:
        msgs = await collect(srv.stub.Generate(prompt_request("x" * 15)))  # default 256 > 5 left
    assert engine.requests[0].sampling.max_tokens == 5
    assert msgs[-1].usage.completion_tokens == 5


async def test_tokenize_and_list_models() -> None:
    engines = [FakeEngine("a", max_context=100), FakeEngine("b", max_context=200)]
    async with running_server(engines) as srv:
        tok = srv.stub.Tokenize(pb.TokenizeRequest(model="b", prompt="hey"))
        reply = await tok
        meta = dict(await tok.initial_metadata())
        models = await srv.stub.ListModels(pb.ListModelsRequest())
    assert list(reply.token_ids) == list(b"hey") and reply.max_context == 200
    assert len(meta["x-request-id"]) == 32
    assert [(m.name, m.digest, m.max_context, m.device) for m in models.models] == [
        ("a", FAKE_DIGEST, 100, "cpu"),
        ("b", FAKE_DIGEST, 200, "cpu"),
    ]


async def test_unix_socket_listener(tmp_path) -> None:
    import os
    import stat

    path = tmp_path / "bastion.sock"
    async with running_server([FakeEngine()], settings=make_settings(listen=f"unix:{path}")) as srv:
        assert srv.address == f"unix:{path}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        msgs = await collect(srv.stub.Generate(prompt_request(max_tokens=2)))
    assert msgs[-1].usage.completion_tokens == 2
