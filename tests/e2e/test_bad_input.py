"""Every bad input gets its status code and a message naming the field and the limit, on the real server."""

from __future__ import annotations

import grpc
import pytest

from bastion.v1 import inference_pb2 as pb

USER = pb.ChatMessage(role=pb.ROLE_USER, content="hi")
SECRETISH = "zq-SECRET-VALUE-zq"


def expect_error(stub, req: pb.GenerateRequest, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(req, timeout=60))
    err = info.value
    assert err.code() == code, (err.code(), err.details())
    details = err.details() or ""
    assert "Traceback" not in details and 'File "' not in details
    return details


CASES = [
    # (sampling / request mutator, field named in the message, limit text expected)
    (dict(sampling=pb.SamplingParams(temperature=2.5)), "sampling.temperature", "2"),
    (dict(sampling=pb.SamplingParams(temperature=float("nan"))), "sampling.temperature", "2"),
    (dict(sampling=pb.SamplingParams(top_p=0.0)), "sampling.top_p", "1"),
    (dict(sampling=pb.SamplingParams(top_k=5000)), "sampling.top_k", "1000"),
    (dict(sampling=pb.SamplingParams(max_tokens=0)), "sampling.max_tokens", "4096"),
    (dict(sampling=pb.SamplingParams(max_tokens=100000)), "sampling.max_tokens", "4096"),
    (dict(sampling=pb.SamplingParams(logprobs=50)), "sampling.logprobs", "20"),
    (dict(sampling=pb.SamplingParams(stop=[f"s{i}" for i in range(9)])), "sampling.stop", "8"),
    (dict(sampling=pb.SamplingParams(stop=[SECRETISH * 20])), "sampling.stop", "128"),
    (dict(client_request_id="bad id with spaces " + SECRETISH), "client_request_id", "128"),
]


@pytest.mark.parametrize("mutation,field,limit", CASES, ids=[c[1] + f"-{i}" for i, c in enumerate(CASES)])
def test_invalid_sampling_is_refused(stub, model_name, mutation, field, limit) -> None:
    req = pb.GenerateRequest(model=model_name, prompt="hello", **mutation)
    details = expect_error(stub, req, grpc.StatusCode.INVALID_ARGUMENT)
    assert field in details and limit in details
    assert SECRETISH not in details, "the offending value must not be echoed"


def test_empty_input_is_refused(stub, model_name) -> None:
    details = expect_error(stub, pb.GenerateRequest(model=model_name), grpc.StatusCode.INVALID_ARGUMENT)
    assert "prompt" in details or "input" in details
    details = expect_error(stub, pb.GenerateRequest(model=model_name, prompt=""), grpc.StatusCode.INVALID_ARGUMENT)
    assert "prompt" in details


def test_missing_model_is_refused(stub) -> None:
    details = expect_error(stub, pb.GenerateRequest(prompt="hello"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "model" in details


def test_unspecified_role_is_refused(stub, model_name) -> None:
    conv = pb.Conversation(messages=[pb.ChatMessage(content="hi")])
    details = expect_error(
        stub, pb.GenerateRequest(model=model_name, conversation=conv), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "role" in details


def test_oversized_message_is_refused(stub, model_name) -> None:
    conv = pb.Conversation(messages=[pb.ChatMessage(role=pb.ROLE_USER, content="x" * 40000)])
    details = expect_error(
        stub, pb.GenerateRequest(model=model_name, conversation=conv), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "content" in details and "32768" in details


def test_too_many_messages_are_refused(stub, model_name) -> None:
    conv = pb.Conversation(messages=[USER] * 65)
    details = expect_error(
        stub, pb.GenerateRequest(model=model_name, conversation=conv), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "messages" in details and "64" in details


def test_oversized_prompt_is_refused(stub, model_name) -> None:
    details = expect_error(
        stub, pb.GenerateRequest(model=model_name, prompt="x" * 140000), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "prompt" in details and "131072" in details


def test_prompt_longer_than_context_is_refused(stub, model_name) -> None:
    prompt = "one two three four five six seven eight nine ten " * 1000  # ~10k tokens, 50 KB
    details = expect_error(
        stub,
        pb.GenerateRequest(model=model_name, prompt=prompt, sampling=pb.SamplingParams(max_tokens=16)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "prompt" in details and "8192" in details


def test_prompt_plus_max_tokens_over_context_is_refused(stub, model_name) -> None:
    prompt = "one two three four five six seven eight nine ten " * 700
    n = len(stub.Tokenize(pb.TokenizeRequest(model=model_name, prompt=prompt), timeout=30).token_ids)
    assert 4000 < n < 8192
    over = pb.SamplingParams(max_tokens=min(4096, 8192 - n + 1))
    assert n + over.max_tokens > 8192
    details = expect_error(
        stub, pb.GenerateRequest(model=model_name, prompt=prompt, sampling=over), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "sampling.max_tokens" in details and "8192" in details


def test_message_over_grpc_limit_is_refused(stub, model_name) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(pb.GenerateRequest(model=model_name, prompt="x" * (2 << 20)), timeout=30))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
