"""Generation on the real engine and the real default model over real gRPC."""

from __future__ import annotations

import grpc

from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc

FRANCE = pb.Conversation(messages=[pb.ChatMessage(role=pb.ROLE_USER, content="What is the capital of France?")])


def collect(
    stub: inference_pb2_grpc.InferenceStub, req: pb.GenerateRequest, timeout: float = 120
) -> list[pb.GenerateResponse]:
    return list(stub.Generate(req, timeout=timeout))


def text_of(msgs: list[pb.GenerateResponse]) -> str:
    return "".join(m.text for m in msgs)


def test_chat_answers_paris_and_streams(stub, model_name) -> None:
    msgs = collect(
        stub,
        pb.GenerateRequest(
            model=model_name, conversation=FRANCE, sampling=pb.SamplingParams(max_tokens=48, temperature=0.0)
        ),
    )
    assert len(msgs) >= 3, "expected a token stream, not one message"
    assert "Paris" in text_of(msgs)
    ids = [t for m in msgs for t in m.token_ids]
    final = msgs[-1]
    assert final.finish_reason == pb.FINISH_REASON_STOP
    assert final.usage.completion_tokens == len(ids)
    assert final.usage.prompt_tokens > 0
    rid = msgs[0].request_id
    assert len(rid) >= 16 and all(m.request_id == rid for m in msgs)
    assert msgs[0].model_digest.startswith("blake3:") and final.model_digest == msgs[0].model_digest
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in msgs[:-1])


def test_request_ids_are_server_generated(stub, model_name) -> None:
    req = pb.GenerateRequest(
        model=model_name,
        prompt="Hello",
        client_request_id="same-label",
        sampling=pb.SamplingParams(max_tokens=2, temperature=0.0),
    )
    a, b = collect(stub, req), collect(stub, req)
    assert a[0].request_id != b[0].request_id
    assert "same-label" not in a[0].request_id


def test_chat_template_matches_tokenize_and_usage(stub, model_name) -> None:
    tok = stub.Tokenize(pb.TokenizeRequest(model=model_name, conversation=FRANCE), timeout=30)
    raw = stub.Tokenize(pb.TokenizeRequest(model=model_name, prompt="What is the capital of France?"), timeout=30)
    # The template adds the default system prompt and role markers around the question.
    assert len(tok.token_ids) > len(raw.token_ids) + 5
    assert tok.max_context == 8192
    msgs = collect(
        stub,
        pb.GenerateRequest(
            model=model_name, conversation=FRANCE, sampling=pb.SamplingParams(max_tokens=4, temperature=0.0)
        ),
    )
    assert msgs[-1].usage.prompt_tokens == len(tok.token_ids)


def test_greedy_is_deterministic(stub, model_name) -> None:
    req = pb.GenerateRequest(
        model=model_name, prompt="Once upon a time", sampling=pb.SamplingParams(max_tokens=24, temperature=0.0)
    )
    runs = [[t for m in collect(stub, req) for t in m.token_ids] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 24


def test_stream_interval_groups_the_same_tokens(stub, model_name) -> None:
    """vLLM's stream_interval through bastion: message boundaries fall only where vLLM emits (the first token,
    then every 4); vLLM may merge emissions for a slow reader, never split them. Same greedy tokens as without."""

    def run(**extra: int) -> list[pb.GenerateResponse]:
        sampling = pb.SamplingParams(max_tokens=9, temperature=0.0, ignore_eos=True, **extra)
        return collect(stub, pb.GenerateRequest(model=model_name, prompt="Once upon a time", sampling=sampling))

    grouped, plain = run(stream_interval=4), run()
    ends = [sum(len(m.token_ids) for m in grouped[: i + 1]) for i in range(len(grouped))]
    assert ends[-1] == 9 and set(ends) <= {1, 5, 9}, ends
    assert [t for m in grouped for t in m.token_ids] == [t for m in plain for t in m.token_ids]
    assert text_of(grouped) == text_of(plain) and grouped[-1].usage == plain[-1].usage
    assert len(plain) > 3  # without it, more messages than the interval allows


def test_seeded_sampling_is_reproducible(stub, model_name) -> None:
    def run(seed: int) -> list[int]:
        req = pb.GenerateRequest(
            model=model_name,
            prompt="My favourite animal is",
            sampling=pb.SamplingParams(max_tokens=16, temperature=1.0, seed=seed),
        )
        return [t for m in collect(stub, req) for t in m.token_ids]

    assert run(7) == run(7)


def test_max_tokens_ends_with_length(stub, model_name) -> None:
    msgs = collect(
        stub,
        pb.GenerateRequest(
            model=model_name,
            prompt="Count: one, two, three,",
            sampling=pb.SamplingParams(max_tokens=5, temperature=0.0),
        ),
    )
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert msgs[-1].usage.completion_tokens == 5
    assert sum(len(m.token_ids) for m in msgs) == 5


def test_stop_string_ends_generation_and_is_excluded(stub, model_name) -> None:
    base = collect(
        stub,
        pb.GenerateRequest(
            model=model_name, conversation=FRANCE, sampling=pb.SamplingParams(max_tokens=48, temperature=0.0)
        ),
    )
    assert "Paris" in text_of(base)
    stopped = collect(
        stub,
        pb.GenerateRequest(
            model=model_name,
            conversation=FRANCE,
            sampling=pb.SamplingParams(max_tokens=48, temperature=0.0, stop=["Paris"]),
        ),
    )
    text = text_of(stopped)
    assert "Paris" not in text
    assert text_of(base).startswith(text)
    assert stopped[-1].finish_reason == pb.FINISH_REASON_STOP
    assert stopped[-1].usage.completion_tokens < base[-1].usage.completion_tokens


def test_logprobs_returned_per_token(stub, model_name) -> None:
    msgs = collect(
        stub,
        pb.GenerateRequest(
            model=model_name, prompt="The sky is", sampling=pb.SamplingParams(max_tokens=4, temperature=0.0, logprobs=3)
        ),
    )
    for m in msgs:
        assert len(m.logprobs) == len(m.token_ids)
        for tid, lp in zip(m.token_ids, m.logprobs, strict=True):
            assert lp.sampled.token_id == tid and lp.sampled.logprob <= 0.0
            assert len(lp.top) == 3
            # Greedy: the sampled token is the most likely one.
            assert lp.top[0].token_id == tid


def test_prefix_cache_reports_cached_tokens(stub, model_name) -> None:
    prompt = "You are a careful assistant. " * 40 + "Question: name a colour."
    req = pb.GenerateRequest(model=model_name, prompt=prompt, sampling=pb.SamplingParams(max_tokens=2, temperature=0.0))
    first = collect(stub, req)[-1].usage
    second = collect(stub, req)[-1].usage
    assert second.prompt_tokens == first.prompt_tokens > 200
    assert second.cached_prompt_tokens >= 128 > first.cached_prompt_tokens


def test_list_models(stub, model_name) -> None:
    (m,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert m.name == "smollm2-135m-instruct" == model_name
    assert m.digest.startswith("blake3:") and len(m.digest) == len("blake3:") + 64
    assert m.max_context == 8192
    assert m.device == "cpu"


def test_vllm_plugin_ran_in_engine_processes(live_server, stub, model_name) -> None:
    markers = list(live_server.marker_dir.glob("plugin-*"))
    pids = {int(p.name.split("-")[1]) for p in markers}
    # vLLM loads general plugins in the API process, the EngineCore and each worker.
    assert live_server.proc.pid in pids
    assert len(pids) >= 2, f"plugin ran only in {pids}"


def test_the_live_server_takes_the_fast_start_path(live_server, stub, model_name) -> None:
    """model.fast_start: no torch.compile, and the model runs in the EngineCore (no worker process): the
    plugin ran in exactly two processes. test_engine_death.py checks the default path."""
    log = live_server.log_text()
    assert "Enforce eager set" in log and "VLLM_ENABLE_V1_MULTIPROCESSING is set to False" in log
    # and the EngineCore forked from the process that imported vLLM in advance (bastion.engine.vllm.forkserver)
    assert "the EngineCore is forked from the preloaded process" in log and "is spawned, not forked" not in log
    pids = {int(p.name.split("-")[1]) for p in live_server.marker_dir.glob("plugin-*")}
    assert len(pids) == 2, pids


def test_unknown_model_is_not_found(stub) -> None:
    try:
        collect(stub, pb.GenerateRequest(model="no-such-model", prompt="hi"))
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("unknown model was served")
