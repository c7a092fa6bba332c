"""``bastion.v1`` responses → OpenAI response bodies and server-sent events.

Streams (``stream: true``) send one ``chat.completion.chunk`` / ``text_completion`` event per engine step,
the finish reason on the last, then (``stream_options.include_usage``) a chunk with no choices and the
usage, then ``data: [DONE]``. ``usage`` carries the cached prompt tokens
(``prompt_tokens_details.cached_tokens``). A call that fails after the stream began ends with one
``data: {"error": ...}`` event and no ``[DONE]`` (as vLLM's server does).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from bastion.server.http.requests import model_id
from bastion.v1 import inference_pb2 as pb

FINISH: dict[int, str] = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_ABORT: "abort",
}
DONE = b"data: [DONE]\n\n"


def usage(u: pb.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    }


def _lp(x: float) -> float:
    """A log-probability JSON can carry (vLLM's convention for -inf and NaN)."""
    return x if math.isfinite(x) else -9999.0


def _top_dict(e: pb.GeneratedTokenLogprobs, k: int) -> dict[str, float]:
    """Completions' ``top_logprobs`` entry: the k alternatives and the token itself, by text."""
    out = {t.token: _lp(t.logprob) for t in e.top[:k]}
    out.setdefault(e.sampled.token, _lp(e.sampled.logprob))
    return out


def _chat_entry(e: pb.GeneratedTokenLogprobs, k: int) -> dict[str, Any]:
    def one(t: pb.TokenLogprob) -> dict[str, Any]:
        return {"token": t.token, "logprob": _lp(t.logprob), "bytes": list(t.token.encode())}

    return {**one(e.sampled), "top_logprobs": [one(t) for t in e.top[:k]]}


def completion_logprobs(
    entries: list[pb.GeneratedTokenLogprobs], k: int, prompt: tuple[str, list[pb.GeneratedTokenLogprobs]] | None
) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs`` object (tokens, token_logprobs, top_logprobs, text_offset); with ``prompt``
    (echo: the prompt's text and its entries after the first token) the prompt's tokens come first, the first
    one without a log-probability."""
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if prompt is not None:
        text, rest = prompt
        tail = "".join(e.sampled.token for e in rest)
        tokens.append(text[: len(text) - len(tail)] if text.endswith(tail) else "")  # the first token's text
        values.append(None)
        tops.append(None)
    for e in ([] if prompt is None else prompt[1]) + entries:
        tokens.append(e.sampled.token)
        values.append(_lp(e.sampled.logprob))
        tops.append(_top_dict(e, k))
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class Shape:
    """One response being built: chat or text completion, its id, creation time and model name."""

    kind: Literal["chat", "text"]
    request_id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    parts: list[str] = field(default_factory=list)
    finish: str | None = None
    usage: dict[str, Any] | None = None
    first: bool = True
    # Log-probabilities asked (top alternatives per token; None: not asked), echo and the prompt's text.
    top: int | None = None
    echo: bool = False
    prompt: str = ""
    entries: list[pb.GeneratedTokenLogprobs] = field(default_factory=list)
    prompt_entries: list[pb.GeneratedTokenLogprobs] = field(default_factory=list)

    @property
    def id(self) -> str:
        return ("chatcmpl-" if self.kind == "chat" else "cmpl-") + self.request_id

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {
            "id": self.id,
            "object": obj + (".chunk" if chunk and self.kind == "chat" else ""),
            "created": self.created,
            "model": self.model,
        }

    def take(self, msg: pb.GenerateResponse) -> None:
        """Keeps what a whole (non-streamed) response needs from one message."""
        self.parts.append(msg.text)
        self.entries.extend(msg.logprobs)
        self.prompt_entries.extend(msg.prompt_logprobs)
        if msg.finish_reason:
            self.finish = FINISH.get(msg.finish_reason, "stop")
            self.usage = usage(msg.usage)

    def chunk(self, msg: pb.GenerateResponse) -> bytes:
        """One streamed message as an event (``take`` first)."""
        finish = self.finish if msg.finish_reason else None
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": msg.text}
            if self.first:
                delta = {"role": "assistant", **delta}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if self.top is not None:
                choice["logprobs"] = {"content": [_chat_entry(e, self.top) for e in msg.logprobs]}
        else:
            choice = {"index": 0, "text": msg.text, "logprobs": None, "finish_reason": finish}
            if self.top is not None:
                choice["logprobs"] = completion_logprobs(list(msg.logprobs), self.top, None)
        self.first = False
        return event({**self._envelope(True), "choices": [choice]})

    def usage_chunk(self) -> bytes:
        return event({**self._envelope(True), "choices": [], "usage": self.usage})

    def whole(self) -> dict[str, Any]:
        text = "".join(self.parts)
        if self.kind == "chat":
            logprobs = None if self.top is None else {"content": [_chat_entry(e, self.top) for e in self.entries]}
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": self.finish,
            }
        else:
            echoed = (self.prompt, self.prompt_entries) if self.echo and self.top is not None else None
            lps = None if self.top is None else completion_logprobs(self.entries, self.top, echoed)
            text = self.prompt + text if self.echo else text
            choice = {"index": 0, "text": text, "logprobs": lps, "finish_reason": self.finish}
        return {**self._envelope(False), "choices": [choice], "usage": self.usage}


def _card(model: pb.ModelInfo, adapter: str = "") -> dict[str, Any]:
    card = {"id": model_id(model.name, adapter), "object": "model", "created": 0, "owned_by": "bastion"}
    if adapter:
        card["parent"] = model.name  # as vLLM's card of a LoRA adapter: its base model
    card["max_model_len"] = model.max_context
    return card


def models(resp: pb.ListModelsResponse) -> dict[str, Any]:
    """The caller's models, each followed by the adapters its policy allows (``<model>@<adapter>``)."""
    data = []
    for m in resp.models:
        data += [_card(m)] + [_card(m, a.name) for a in m.adapters]
    return {"object": "list", "data": data}
