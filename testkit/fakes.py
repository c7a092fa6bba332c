"""A fake engine implementing bastion.engine.protocol.Engine, with configurable delays and failures.

Tokenization is one token per UTF-8 byte (a conversation is rendered as ``<role>content`` turns plus
``<assistant>``); generation yields one token per step with text ``"w<i> "``. It records what the
server did to it: requests, aborts, closed streams. The gRPC tests drive it in-process
(tests/grpc/grpc_harness.py); ``testkit.fake_server`` serves it from a process (load tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from bastion.engine.protocol import (
    ChatTurn,
    EngineOutput,
    EngineRequest,
    EngineStats,
    ModelInfo,
    TokenLogprobs,
)
from bastion.errors import EngineError

FAKE_DIGEST = "blake3:" + "ab" * 32


class FakeEngine:
    def __init__(
        self,
        name: str = "fake-model",
        *,
        max_context: int = 256,
        digest: str = FAKE_DIGEST,
        ready: bool = True,
        token_delay: float = 0.0,
        stop_after: int | None = None,
        hang_after: int | None = None,
        die_after: int | None = None,
        fail_after: int | None = None,
        fail_with: BaseException | None = None,
        tokenize_error: BaseException | None = None,
        tokenize_delay: float = 0.0,
        stats: EngineStats | None = None,
        adapters: tuple[str, ...] = (),
    ) -> None:
        # Each adapter's digest is a fixed function of its name (the real engine hashes its directory).
        digests = tuple((a, "blake3:" + hashlib.blake2s(a.encode()).hexdigest()) for a in adapters)
        self._info = ModelInfo(
            name=name, digest=digest, max_context=max_context, device="cpu", adapters=adapters, adapter_digests=digests
        )
        self._ready = ready
        self._dead = False
        self.token_delay = token_delay
        self.stop_after = stop_after
        self.hang_after = hang_after
        self.die_after = die_after
        self.fail_after = fail_after
        self.fail_with = fail_with or RuntimeError("boom: secret internals /etc/passwd")
        self.tokenize_error = tokenize_error
        self.tokenize_delay = tokenize_delay
        self._stats = stats or EngineStats(running=1, waiting=2, kv_usage=0.25)
        self.requests: list[EngineRequest] = []
        self.raw_special_tokens: list[bool] = []  # what each tokenize call was allowed
        self.aborted: list[str] = []
        self.closed: list[str] = []
        self.shutdown_called = False
        self.started = asyncio.Event()  # set when a generation yields its first token

    @property
    def info(self) -> ModelInfo:
        return self._info

    def is_ready(self) -> bool:
        return self._ready

    def is_dead(self) -> bool:
        return self._dead

    def set_ready(self, ready: bool = True) -> None:
        self._ready = ready

    def die(self) -> None:
        self._dead = True

    async def tokenize(
        self, prompt: str | None, conversation: Sequence[ChatTurn] | None, *, raw_special_tokens: bool = False
    ) -> list[int]:
        self.raw_special_tokens.append(raw_special_tokens)
        if self.tokenize_delay:
            await asyncio.sleep(self.tokenize_delay)
        if self.tokenize_error is not None:
            raise self.tokenize_error
        if prompt is not None:
            text = prompt
        else:
            text = "".join(f"<{t.role}>{t.content}" for t in conversation or ()) + "<assistant>"
        return list(text.encode("utf-8"))

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        self.requests.append(request)
        if request.sampling.stream_interval > 1:
            return _every(request.sampling.stream_interval, self._generate(request))
        return self._generate(request)

    async def _generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        n = request.sampling.max_tokens
        prompt_tokens = len(request.prompt_token_ids)
        try:
            for i in range(n):
                if self.hang_after is not None and i >= self.hang_after:
                    await asyncio.Event().wait()  # until cancelled
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                if self.die_after is not None and i >= self.die_after:
                    self._dead = True
                    raise EngineError("engine core process died")
                if self.fail_after is not None and i >= self.fail_after:
                    raise self.fail_with
                stop = self.stop_after is not None and i + 1 >= self.stop_after
                finished = stop or i + 1 == n
                logprobs: tuple[TokenLogprobs, ...] = ()
                if request.sampling.logprobs:
                    top = tuple((1000 + i + k, -0.5 - k) for k in range(request.sampling.logprobs))
                    texts = tuple(_token_text(t) for t, _ in top)
                    logprobs = (TokenLogprobs(1000 + i, -0.5, top, token=_token_text(1000 + i), top_tokens=texts),)
                prompt_lps: tuple[TokenLogprobs, ...] = ()
                if i == 0 and request.sampling.prompt_logprobs is not None:
                    prompt_lps = _prompt_logprobs(request.prompt_token_ids, request.sampling.prompt_logprobs)
                yield EngineOutput(
                    text=f"w{i} ",
                    token_ids=(1000 + i,),
                    logprobs=logprobs,
                    finished=finished,
                    finish_reason=("stop" if stop else "length") if finished else None,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=i + 1,
                    cached_prompt_tokens=prompt_tokens // 2,
                    prompt_logprobs=prompt_lps,
                )
                self.started.set()
                if finished:
                    return
        finally:
            self.closed.append(request.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def prompt_logprobs(self, request_id: str, token_ids: Sequence[int]) -> list[float]:
        """A deterministic stand-in: each token's log-probability depends on it and its predecessor only."""
        return [-((a * 31 + b) % 97) / 10.0 for a, b in itertools.pairwise(token_ids)]

    def stats(self) -> EngineStats:
        return self._stats

    async def shutdown(self) -> None:
        self.shutdown_called = True


def _token_text(token_id: int) -> str:
    """The fake tokenizer's text of a token: prompt tokens are UTF-8 bytes, generated ones ``w<i> ``."""
    return bytes([token_id]).decode("latin-1") if token_id < 256 else f"w{token_id - 1000} "


def _prompt_logprobs(ids: Sequence[int], k: int) -> tuple[TokenLogprobs, ...]:
    """Deterministic prompt log-probabilities: a token is its position's top choice when it is even."""
    out = []
    for t in ids[1:]:
        lp = -0.25 - (t % 5) / 10
        best = lp if t % 2 == 0 else lp + 0.5
        top = tuple(((t if t % 2 == 0 else 32) if j == 0 else 33 + j, best - j) for j in range(k))
        out.append(TokenLogprobs(t, lp, top, token=_token_text(t), top_tokens=tuple(_token_text(x) for x, _ in top)))
    return tuple(out)


async def _every(k: int, outputs: AsyncIterator[EngineOutput]) -> AsyncIterator[EngineOutput]:
    """vLLM's stream_interval over the fake's one-token outputs: the first at once, then one output per ``k``
    tokens, and the last with what remains."""
    held: list[EngineOutput] = []
    first = True
    async for out in outputs:
        held.append(out)
        if first or out.finished or sum(len(h.token_ids) for h in held) >= k:
            yield replace(
                out,
                text="".join(h.text for h in held),
                token_ids=tuple(t for h in held for t in h.token_ids),
                logprobs=tuple(lp for h in held for lp in h.logprobs),
                prompt_logprobs=held[0].prompt_logprobs,
            )
            held, first = [], False
