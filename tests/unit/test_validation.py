"""Every request limit in bastion.server.validation: field named, limit stated, value never echoed."""

from __future__ import annotations

import math

import pytest

from bastion.config import LimitSettings, ModelSettings
from bastion.engine.protocol import ChatTurn, SamplingSpec
from bastion.errors import InvalidArgument
from bastion.server.validation import (
    MAX_STREAM_INTERVAL,
    GenerateSpec,
    InputSpec,
    fit_context,
    validate_generate,
    validate_input,
)
from bastion.v1 import inference_pb2 as pb

LIMITS = LimitSettings()
SECRET = "zq7secretvalue"


def gen(**kw: object) -> pb.GenerateRequest:
    sampling = kw.pop("sampling", None)
    req = pb.GenerateRequest(model=kw.pop("model", "m"), **kw)
    if "prompt" not in kw and "conversation" not in kw:
        req.prompt = "hi"
    if sampling is not None:
        req.sampling.CopyFrom(sampling)
    return req


def refused(req: pb.GenerateRequest, field: str, limits: LimitSettings = LIMITS) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate_generate(req, limits)
    msg = info.value.public_message
    assert info.value.field == field
    assert msg.startswith(f"{field}: ")
    assert SECRET not in msg
    return msg


def conv(*messages: tuple[int, str]) -> pb.Conversation:
    return pb.Conversation(messages=[pb.ChatMessage(role=r, content=c) for r, c in messages])


def test_valid_prompt_takes_defaults() -> None:
    spec = validate_generate(gen(prompt="hello"), LIMITS)
    assert spec.input == InputSpec(model="m", prompt="hello")
    assert spec.sampling == SamplingSpec(max_tokens=256)
    assert not spec.max_tokens_explicit
    assert spec.client_request_id == ""


def test_valid_conversation_and_every_sampling_field() -> None:
    s = pb.SamplingParams(
        max_tokens=10, temperature=0.0, top_p=0.5, top_k=40, seed=2**63 - 1, stop=["\n"], logprobs=20, stream_interval=4
    )
    spec = validate_generate(
        gen(
            conversation=conv((pb.ROLE_SYSTEM, "be brief"), (pb.ROLE_USER, "hi"), (pb.ROLE_ASSISTANT, "")),
            sampling=s,
            client_request_id="abc-1.2:3_x",
        ),
        LIMITS,
    )
    assert spec.input.conversation == (
        ChatTurn("system", "be brief"),
        ChatTurn("user", "hi"),
        ChatTurn("assistant", ""),
    )
    assert spec.sampling == SamplingSpec(
        max_tokens=10,
        temperature=0.0,
        top_p=0.5,
        top_k=40,
        seed=2**63 - 1,
        stop=("\n",),
        logprobs=20,
        stream_interval=4,
    )
    assert spec.max_tokens_explicit


def test_model_required_and_bounded() -> None:
    assert refused(gen(model=""), "model") == "model: is required"
    assert "128 bytes" in refused(gen(model="é" * 65), "model")  # 130 bytes, 65 characters


def test_input_oneof_required() -> None:
    req = pb.GenerateRequest(model="m")
    with pytest.raises(InvalidArgument) as info:
        validate_generate(req, LIMITS)
    assert info.value.public_message == "input: one of prompt or conversation is required"


def test_prompt_bytes() -> None:
    assert "between 1 and 131072 bytes" in refused(gen(prompt=""), "prompt")
    refused(gen(prompt=SECRET + "x" * 131072), "prompt")
    small = LimitSettings(max_input_bytes=8)
    refused(gen(prompt="ééééé"), "prompt", small)  # 5 characters, 10 bytes
    validate_generate(gen(prompt="éééé"), small)  # exactly 8 bytes


def test_conversation_limits() -> None:
    assert "between 1 and 64 messages" in refused(gen(conversation=pb.Conversation()), "conversation.messages")
    refused(gen(conversation=conv(*[(pb.ROLE_USER, "x")] * 65)), "conversation.messages")
    refused(gen(conversation=conv((pb.ROLE_USER, "x"), (pb.ROLE_UNSPECIFIED, SECRET))), "conversation.messages[1].role")
    refused(gen(conversation=conv((7, "x"))), "conversation.messages[0].role")
    msg = refused(gen(conversation=conv((pb.ROLE_USER, SECRET * 3000))), "conversation.messages[0].content")
    assert "32768 bytes" in msg
    total = conv(*[(pb.ROLE_USER, "x" * 30000)] * 5)
    assert "131072 bytes" in refused(gen(conversation=total), "conversation")


@pytest.mark.parametrize(
    ("sampling", "field", "limit_text"),
    [
        (pb.SamplingParams(max_tokens=0), "sampling.max_tokens", "between 1 and 4096"),
        (pb.SamplingParams(max_tokens=4097), "sampling.max_tokens", "between 1 and 4096"),
        (pb.SamplingParams(temperature=-0.1), "sampling.temperature", "between 0 and 2"),
        (pb.SamplingParams(temperature=2.01), "sampling.temperature", "between 0 and 2"),
        (pb.SamplingParams(temperature=math.nan), "sampling.temperature", "between 0 and 2"),
        (pb.SamplingParams(temperature=math.inf), "sampling.temperature", "between 0 and 2"),
        (pb.SamplingParams(top_p=0.0), "sampling.top_p", "greater than 0 and at most 1"),
        (pb.SamplingParams(top_p=1.01), "sampling.top_p", "greater than 0 and at most 1"),
        (pb.SamplingParams(top_p=math.nan), "sampling.top_p", "greater than 0 and at most 1"),
        (pb.SamplingParams(top_k=1001), "sampling.top_k", "between 0 and 1000"),
        (pb.SamplingParams(seed=2**63), "sampling.seed", "at most 2^63-1"),
        (pb.SamplingParams(stop=["a"] * 9), "sampling.stop", "at most 8 strings"),
        (pb.SamplingParams(stop=["ok", ""]), "sampling.stop[1]", "between 1 and 128 bytes"),
        (pb.SamplingParams(stop=[SECRET * 10]), "sampling.stop[0]", "between 1 and 128 bytes"),
        (pb.SamplingParams(logprobs=21), "sampling.logprobs", "between 0 and 20"),
        (pb.SamplingParams(stream_interval=0), "sampling.stream_interval", "between 1 and 16"),
        (pb.SamplingParams(stream_interval=17), "sampling.stream_interval", "between 1 and 16"),
    ],
)
def test_sampling_limits(sampling: pb.SamplingParams, field: str, limit_text: str) -> None:
    assert limit_text in refused(gen(sampling=sampling), field)


def test_sampling_bounds_accepted() -> None:
    s = pb.SamplingParams(
        max_tokens=4096, temperature=2.0, top_p=1.0, top_k=0, seed=0, logprobs=0, stop=["x" * 128] * 8
    )
    validate_generate(gen(sampling=s), LIMITS)
    for k in (1, MAX_STREAM_INTERVAL):
        assert (
            validate_generate(gen(sampling=pb.SamplingParams(stream_interval=k)), LIMITS).sampling.stream_interval == k
        )
    # The server's floor (model.stream_interval) has the same bound as a call.
    assert ModelSettings(stream_interval=MAX_STREAM_INTERVAL).stream_interval == MAX_STREAM_INTERVAL
    with pytest.raises(ValueError, match="stream_interval"):
        ModelSettings(stream_interval=MAX_STREAM_INTERVAL + 1)


def test_configured_limits_apply() -> None:
    limits = LimitSettings(max_tokens=10, default_max_tokens=50, max_logprobs=2, max_stop_strings=1)
    assert validate_generate(gen(), limits).sampling.max_tokens == 10  # default capped by the maximum
    assert "between 1 and 10" in refused(gen(sampling=pb.SamplingParams(max_tokens=11)), "sampling.max_tokens", limits)
    refused(gen(sampling=pb.SamplingParams(logprobs=3)), "sampling.logprobs", limits)
    refused(gen(sampling=pb.SamplingParams(stop=["a", "b"])), "sampling.stop", limits)


@pytest.mark.parametrize("value", ["has space", "semi;colon", "x" * 129, "ünï", SECRET + "/"])
def test_client_request_id(value: str) -> None:
    refused(gen(client_request_id=value), "client_request_id")


def test_tokenize_input_shares_rules() -> None:
    with pytest.raises(InvalidArgument, match="^prompt: "):
        validate_input(pb.TokenizeRequest(model="m", prompt=""), LIMITS)
    with pytest.raises(InvalidArgument, match="^model: "):
        validate_input(pb.TokenizeRequest(prompt="x"), LIMITS)
    assert validate_input(pb.TokenizeRequest(model="m", prompt="x"), LIMITS).prompt == "x"


def _spec(max_tokens: int, explicit: bool, prompt: str | None = "p") -> GenerateSpec:
    conversation = None if prompt is not None else (ChatTurn("user", "x"),)
    return GenerateSpec(InputSpec("m", prompt, conversation), SamplingSpec(max_tokens=max_tokens), explicit, "")


def test_fit_context() -> None:
    assert fit_context(_spec(10, True), 90, 100).max_tokens == 10
    assert fit_context(_spec(256, False), 90, 100).max_tokens == 10  # default shortened to fit
    with pytest.raises(InvalidArgument) as info:
        fit_context(_spec(11, True), 90, 100)
    assert info.value.field == "sampling.max_tokens" and "model context of 100 tokens" in str(info.value)
    with pytest.raises(InvalidArgument, match="^prompt: must be shorter than the model context of 100 tokens"):
        fit_context(_spec(1, True), 100, 100)
    with pytest.raises(InvalidArgument, match="^conversation: "):
        fit_context(_spec(1, True, prompt=None), 150, 100)
    with pytest.raises(InvalidArgument, match="^prompt: must produce at least 1 token"):
        fit_context(_spec(1, True), 0, 100)
