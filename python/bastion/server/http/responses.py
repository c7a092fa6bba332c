"""``bastion.v1`` responses → OpenAI response bodies and server-sent events.

Streams (``stream: true``) send one ``chat.completion.chunk`` / ``text_completion`` event per engine step,
the finish reason on the last, then (``stream_options.include_usage``) a chunk with no choices and the
usage, then ``data: [DONE]``. ``usage`` carries the cached prompt tokens
(``prompt_tokens_details.cached_tokens``). A call that fails after the stream began ends with one
``data: {"error": ...}`` event and no ``[DONE]`` (as vLLM's server does).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

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
        else:
            choice = {"index": 0, "text": msg.text, "logprobs": None, "finish_reason": finish}
        self.first = False
        return event({**self._envelope(True), "choices": [choice]})

    def usage_chunk(self) -> bytes:
        return event({**self._envelope(True), "choices": [], "usage": self.usage})

    def whole(self) -> dict[str, Any]:
        text = "".join(self.parts)
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": self.finish,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish}
        return {**self._envelope(False), "choices": [choice], "usage": self.usage}


def models(resp: pb.ListModelsResponse) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "bastion", "max_model_len": m.max_context}
            for m in resp.models
        ],
    }
