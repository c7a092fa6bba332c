"""The official ``openai`` SDK against the HTTP API over the fake engine: chat, completions, streaming with
usage, models, its error classes for the API's refusals, and its retry on 429 honouring ``Retry-After``.
(The same SDK against the real engine: tests/e2e/test_http_api.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
from http_harness import base_url, calls, http_server, records

from fakes import FakeEngine
from identity import make_identity

pytestmark = pytest.mark.asyncio
MSG = [{"role": "user", "content": "hello"}]


def sdk(srv, who: str | None = "alice", **kw) -> openai.AsyncOpenAI:  # type: ignore[no-untyped-def]
    key = "none" if who is None else srv.identity.keys[who]
    return openai.AsyncOpenAI(base_url=base_url(srv) + "/v1", api_key=key, **kw)


async def test_chat_completions_and_models_through_the_sdk() -> None:
    async with http_server([FakeEngine()]) as srv:
        c = sdk(srv)
        chat = await c.chat.completions.create(model="fake-model", messages=MSG, max_tokens=3)  # type: ignore[arg-type]
        assert chat.choices[0].message.content == "w0 w1 w2 " and chat.choices[0].finish_reason == "length"
        assert chat.usage is not None and chat.usage.completion_tokens == 3
        assert chat.usage.prompt_tokens_details is not None and chat.usage.prompt_tokens_details.cached_tokens > 0
        text = await c.completions.create(model="fake-model", prompt="abc", max_tokens=2, temperature=0)
        assert text.choices[0].text == "w0 w1 " and text.usage is not None and text.usage.prompt_tokens == 3
        assert text.id.startswith("cmpl-") and text.object == "text_completion"
        models = await c.models.list()
        assert [m.id for m in models.data] == ["fake-model"]
        await c.close()


async def test_streaming_ends_with_the_usage_chunk_and_done() -> None:
    async with http_server([FakeEngine()]) as srv:
        c = sdk(srv)
        stream = await c.chat.completions.create(
            model="fake-model",
            messages=MSG,  # type: ignore[arg-type]
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [ch async for ch in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "w0 w1 w2 w3 "
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 4
        text = await c.completions.create(model="fake-model", prompt="abc", max_tokens=2, stream=True)
        assert "".join([ch.choices[0].text async for ch in text]) == "w0 w1 "
        rec = records(srv.audit_dir)[-1]
        assert rec["method"] == "POST /v1/completions" and rec["completion_tokens"] == 2
        # vLLM's stream_interval extension: the first token at once, then three per chunk.
        grouped = await c.completions.create(
            model="fake-model", prompt="abc", max_tokens=7, stream=True, extra_body={"stream_interval": 3}
        )
        assert [ch.choices[0].text async for ch in grouped] == ["w0 ", "w1 w2 w3 ", "w4 w5 w6 "]
        with pytest.raises(openai.BadRequestError) as bad:
            await c.completions.create(model="fake-model", prompt="x", stream=True, extra_body={"stream_interval": 17})
        assert bad.value.body["message"] == "stream_interval: must be between 1 and 16"  # type: ignore[index]
        await c.close()


async def test_refusals_arrive_as_the_sdks_error_classes() -> None:
    async with http_server([FakeEngine()], http={"max_body_bytes": 2048}) as srv:
        c = sdk(srv, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await sdk(srv, None, max_retries=0).models.list()
        with pytest.raises(openai.NotFoundError) as nf:
            await c.chat.completions.create(model="no-such-model", messages=MSG)  # type: ignore[arg-type]
        assert nf.value.status_code == 404
        with pytest.raises(openai.BadRequestError) as bad:
            await c.chat.completions.create(model="fake-model", messages=MSG, temperature=3.5)  # type: ignore[arg-type]
        assert bad.value.body == {
            "message": "temperature: must be between 0 and 2",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_argument",
        }
        with pytest.raises(openai.BadRequestError) as ext:
            await c.completions.create(model="fake-model", prompt="x", extra_body={"repetition_penalty": 1.3})
        assert ext.value.body["param"] == "repetition_penalty"  # type: ignore[index]
        with pytest.raises(openai.PermissionDeniedError):
            await c.completions.create(model="fake-model", prompt="x", extra_body={"cache_salt": "other"})
        with pytest.raises(openai.APIStatusError) as big:
            await c.completions.create(model="fake-model", prompt="x" * 4000)
        assert big.value.status_code == 413
        await c.close()


async def test_the_sdk_retries_a_rate_limit_after_the_servers_retry_after(tmp_path: Path) -> None:
    ident = make_identity(tmp_path, tenants={"tenant-a": {"requests_per_s": 1.0, "request_burst": 1}})
    async with http_server([FakeEngine()], identity=ident) as srv:
        c = sdk(srv, max_retries=2)
        await c.completions.create(model="fake-model", prompt="x", max_tokens=1)
        started = time.monotonic()
        raw = await c.completions.with_raw_response.create(model="fake-model", prompt="x", max_tokens=1)
        waited = time.monotonic() - started
        assert raw.retries_taken >= 1 and waited >= 0.9  # it waited for the bucket, as Retry-After said
        await c.close()
        assert records(srv.audit_dir)[-1]["status"] == "OK"
    assert calls(records(srv.audit_dir), event="rate_limited", method="POST /v1/completions") >= 1


async def test_log_probabilities_and_echo_as_lm_eval_reads_them() -> None:
    async with http_server([FakeEngine()]) as srv:
        c = sdk(srv)
        chat = await c.chat.completions.create(
            model="fake-model",
            messages=MSG,
            max_tokens=2,
            logprobs=True,
            top_logprobs=2,  # type: ignore[arg-type]
        )
        content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
        assert [e.token for e in content] == ["w0 ", "w1 "] and content[0].logprob == -0.5  # type: ignore[union-attr]
        assert [t.token for t in content[1].top_logprobs] == ["w1 ", "w2 "]  # type: ignore[index]
        # lm-evaluation-harness's loglikelihood request: echo, logprobs 1, one token.
        r = await c.completions.create(
            model="fake-model", prompt="abcd", max_tokens=1, logprobs=1, echo=True, temperature=0
        )
        lp = r.choices[0].logprobs
        assert r.choices[0].text == "abcdw0 " and lp is not None
        assert lp.tokens == ["a", "b", "c", "d", "w0 "] and lp.text_offset == [0, 1, 2, 3, 4]
        assert lp.token_logprobs is not None and lp.token_logprobs[0] is None
        # The fake engine's: -0.25 - (id % 5) / 10; an even token is its position's top choice.
        assert lp.token_logprobs[1:] == pytest.approx([-0.55, -0.65, -0.25, -0.5])
        assert lp.top_logprobs is not None and lp.top_logprobs[0] is None
        assert lp.top_logprobs[1] == pytest.approx({"b": -0.55})  # "b" (98): greedy
        assert lp.top_logprobs[2] == pytest.approx({" ": -0.15, "c": -0.65})  # "c" (99): not
        await c.close()
