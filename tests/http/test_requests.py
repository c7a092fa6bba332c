"""OpenAI request bodies → bastion.v1 requests (bastion.server.http.requests): what is taken, what is taken
only at its neutral value, and what is refused, each naming the field."""

from __future__ import annotations

import pytest

from bastion.errors import InvalidArgument, PermissionDenied
from bastion.server.http.requests import chat_request, completion_request, http_field, parse_json
from bastion.v1 import inference_pb2 as pb

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_vllm_bench_and_lm_eval_style_bodies_are_taken() -> None:
    # What `vllm bench serve` sends to /v1/completions (repetition_penalty 1.0, logprobs null, usage in stream).
    bench = {
        "model": "m",
        "prompt": "hello",
        "temperature": 0.0,
        "repetition_penalty": 1.0,
        "max_tokens": 8,
        "logprobs": None,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    p = completion_request(bench, "")
    assert p.stream and p.include_usage and p.request.prompt == "hello"
    assert p.request.sampling.max_tokens == 8 and p.request.sampling.HasField("temperature")
    chat = chat_request(
        {
            **CHAT,
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "max_completion_tokens": 5,
            "top_k": -1,
            "stop": "x",
            "seed": 3,
            "n": 1,
            "user": "u1",
        },
        "cid",
    )
    m = chat.request
    assert m.conversation.messages[0].role == pb.ROLE_SYSTEM and m.conversation.messages[0].content == "a\nb"
    assert m.sampling.max_tokens == 5 and m.sampling.top_k == 0 and list(m.sampling.stop) == ["x"]
    assert m.client_request_id == "cid" and not chat.stream


def test_completions_default_to_sixteen_tokens_and_chat_to_the_servers_default() -> None:
    assert completion_request({"model": "m", "prompt": ["one"]}, "").request.sampling.max_tokens == 16
    assert not chat_request(CHAT, "").request.sampling.HasField("max_tokens")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"repetition_penalty": 1.1}, "repetition_penalty"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages[0].name"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"functions": []}, "functions"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, "max_completion_tokens"),
    ],
)
def test_fields_that_would_change_the_output_are_refused_by_name(extra: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        chat_request({**CHAT, **extra}, "")
    assert exc.value.field == field, exc.value.public_message


@pytest.mark.parametrize("field", ["cache_salt", "tenant", "Tenant_Id", "x_user", "principal"])
def test_identity_fields_are_override_attempts(field: str) -> None:
    with pytest.raises(PermissionDenied):
        completion_request({"model": "m", "prompt": "x", field: "other"}, "")


def test_completion_refusals() -> None:
    for extra, field in (
        ({"echo": True, "stream": True}, "echo"),
        ({"best_of": 2}, "best_of"),
        ({"logprobs": 21}, "logprobs"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2]}, "prompt"),
        ({"suffix": "s"}, "suffix"),
    ):
        with pytest.raises(InvalidArgument) as exc:
            completion_request({"model": "m", "prompt": "x", **extra}, "")
        assert exc.value.field.startswith(field), (extra, exc.value.field)


@pytest.mark.parametrize("body", [b"[1]", b"not json", b'{"a": 1, "a": 2}', b"[" * 100000 + b"]" * 100000, b"\xff"])
def test_a_body_must_be_one_json_object_without_duplicate_keys(body: bytes) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_json(body)
    assert exc.value.field == "body" and "{" not in exc.value.public_message


def test_the_grpc_field_paths_are_renamed_for_http() -> None:
    assert http_field("sampling.temperature") == "temperature"
    assert http_field("conversation.messages[2].content") == "messages[2].content"
    assert http_field("sampling.max_tokens") == "max_tokens" and http_field("model") == "model"


def test_log_probabilities_and_echo_map_onto_the_sampling_params() -> None:
    chat = chat_request({**CHAT, "logprobs": True, "top_logprobs": 0}, "")
    assert chat.logprobs == 0 and chat.request.sampling.logprobs == 1  # the sampled token's, one alternative
    assert not chat.request.sampling.HasField("prompt_logprobs")
    lm_eval = completion_request(
        {
            "model": "m",
            "prompt": "ctx cont",
            "temperature": 0,
            "max_tokens": 1,
            "logprobs": 1,
            "seed": 1234,
            "echo": True,
        },
        "",
    )
    s = lm_eval.request.sampling
    assert lm_eval.echo and lm_eval.logprobs == 1 and s.logprobs == 1 and s.prompt_logprobs == 1
    assert completion_request({"model": "m", "prompt": "x", "ignore_eos": True}, "").request.sampling.ignore_eos
    body = {"model": "m", "prompt": "x", "stream_interval": 4}
    assert completion_request(body, "").request.sampling.stream_interval == 4  # vLLM's extension, as vLLM takes it
    assert not completion_request({"model": "m", "prompt": "x"}, "").request.sampling.HasField("stream_interval")
    for bad in (0, -1, 2**32):  # what does not fit the proto field; 17 and up: the servicer's bound
        with pytest.raises(InvalidArgument) as exc:
            completion_request({**body, "stream_interval": bad}, "")
        assert exc.value.field == "stream_interval" and "between 1 and 16" in str(exc.value)
    plain = completion_request({"model": "m", "prompt": "x", "echo": True}, "")
    assert plain.echo and not plain.request.sampling.HasField("prompt_logprobs")
