"""The OpenAI-compatible HTTP API on the real engine (issue 17): the official ``openai`` SDK against the live
server's ``[http]`` listener — a chat answer, a stream ending with its usage, the prompt cache partitioned by
tenant exactly as over gRPC (the partition comes from the credential, never from the request), and the
audit records naming the HTTP route."""

from __future__ import annotations

import json
import secrets

import openai
import pytest

from conftest import LiveServer

pytestmark = pytest.mark.e2e


def _sdk(live_server: LiveServer, who: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.http_url + "/v1", api_key=live_server.identity.keys[who], timeout=180)


def _records(live_server: LiveServer) -> list[dict]:
    out = []
    for seg in sorted(live_server.audit_dir.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line]
    return [r for r in out if r["kind"] == "request"]


def test_the_sdk_chats_with_the_real_model_and_the_record_names_the_route(
    live_server: LiveServer, model_name: str
) -> None:
    with _sdk(live_server) as c:
        assert [m.id for m in c.models.list().data] == [model_name]
        chat = c.chat.completions.create(
            model=model_name,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16,
            temperature=0,
        )
    assert "Paris" in (chat.choices[0].message.content or "")
    assert chat.usage is not None and chat.usage.prompt_tokens > 5
    rid = chat.id.removeprefix("chatcmpl-")
    rec = next(r for r in _records(live_server) if r["request_id"] == rid and r.get("event") != "begin")
    assert rec["method"] == "POST /v1/chat/completions" and rec["tenant"] == "tenant-a" and rec["status"] == "OK"
    assert rec["completion_tokens"] == chat.usage.completion_tokens and rec["model_digest"].startswith("blake3:")


def test_a_stream_ends_with_its_usage(live_server: LiveServer, model_name: str) -> None:
    with _sdk(live_server, "bob") as c:
        stream = c.completions.create(
            model=model_name,
            prompt="The capital of France is",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert "Paris" in text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert 1 <= chunks[-1].usage.completion_tokens <= 8 and chunks[-1].usage.prompt_tokens > 3


def test_the_prompt_cache_is_partitioned_by_tenant_over_http(live_server: LiveServer, model_name: str) -> None:
    """bob (tenant-b) sending alice's (tenant-a) long prompt gets no cached tokens; alice and carol (another
    principal of tenant-a) repeating it do."""
    salt = secrets.token_hex(4)  # a prompt no earlier test sent
    prompt = f"Tenant A's private notes {salt}: " + " ".join(f"item-{i} costs {i * 7 % 13}." for i in range(150))

    def cached(who: str) -> int:
        with _sdk(live_server, who) as c:
            r = c.completions.create(model=model_name, prompt=prompt, max_tokens=1, temperature=0)
        assert r.usage is not None and r.usage.prompt_tokens > 500
        details = r.usage.prompt_tokens_details
        return 0 if details is None else details.cached_tokens or 0

    assert cached("alice") == 0  # cold
    assert cached("bob") == 0  # another tenant: no hit on tenant A's blocks
    assert cached("alice") > 0  # the same tenant hits its own prefix
    assert cached("carol") > 0  # tenant A's other principal shares the tenant's partition
