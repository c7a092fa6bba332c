"""Drives a probe suite through the real server over gRPC (``bastion eval``).

Every probe is one ``Generate`` call as the evaluation principal: the probe's chat turns, greedy decoding
(temperature 0, fixed seed) so a run is repeatable and two models can be compared probe by probe, and the
probe's ``max_tokens``. At most ``concurrency`` calls are in flight (the engine batches them).

Fail closed: a probe whose call fails is retried once after a short pause (a rate limit or a transient
UNAVAILABLE); if it fails again the run stops with :class:`EvalError` and no report is written, so an
evaluation can never pass on the probes that happened to succeed. Each response names the digest of the
model that served it; a digest other than the one the run started with stops the run too (the model
changed mid-evaluation).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bastion.assurance.detectors import score
from bastion.assurance.suites import Probe, Suite
from bastion.errors import BastionError

ROLES = {"system": 1, "user": 2, "assistant": 3}  # bastion.v1.Role values
CALL_TIMEOUT_S = 600.0


class EvalError(BastionError):
    public_default = "the evaluation could not complete"


@dataclass(frozen=True, slots=True)
class Attempt:
    probe: Probe
    output: str
    score: float
    hit: bool  # score >= 0.5: the bad outcome (garak's "fail")
    completion_tokens: int
    finish_reason: int
    latency_s: float


def _request(pb: Any, model: str, probe: Probe, adapter: str | None, seed: int) -> Any:
    conversation = pb.Conversation(messages=[pb.ChatMessage(role=ROLES[r], content=c) for r, c in probe.messages])
    return pb.GenerateRequest(
        model=model,
        conversation=conversation,
        adapter=adapter or "",
        sampling=pb.SamplingParams(max_tokens=probe.max_tokens, temperature=0.0, seed=seed),
        client_request_id=re.sub(r"[^A-Za-z0-9._:-]", ".", f"eval:{probe.id}")[:128],
    )


async def _generate(stub: Any, request: Any) -> tuple[str, int, int, str]:
    parts: list[str] = []
    tokens = finish = 0
    digest = ""
    async for msg in stub.Generate(request, timeout=CALL_TIMEOUT_S):
        parts.append(msg.text)
        digest = msg.model_digest or digest
        if msg.HasField("usage"):
            tokens, finish = msg.usage.completion_tokens, msg.finish_reason
    return "".join(parts), tokens, finish, digest


async def run_suite(
    stub: Any,
    pb: Any,
    model: str,
    digest: str,
    suite: Suite,
    *,
    adapter: str | None = None,
    concurrency: int = 8,
    seed: int = 0,
    on_done: Callable[[int, int], None] | None = None,
) -> list[Attempt]:
    """Runs every probe of ``suite``; returns the attempts in suite order. ``digest``: the model's
    "blake3:<hex>" digest from ListModels; every response must carry it."""
    import grpc

    sem = asyncio.Semaphore(max(1, concurrency))
    done = 0

    async def one(probe: Probe) -> Attempt:
        nonlocal done
        async with sem:
            request = _request(pb, model, probe, adapter, seed)
            started = time.perf_counter()
            try:  # a refusal with a delay is retried by the channel's retry policy (bastion.cli.client)
                text, tokens, finish, served = await _generate(stub, request)
            except grpc.aio.AioRpcError as exc:
                raise EvalError(f"probe {probe.id}: {exc.code().name}: {exc.details()}") from None
            if served != digest:
                raise EvalError(f"probe {probe.id} was served by {served or 'an unnamed model'}, not {digest}")
            value = score(probe, text)
            done += 1
            if on_done is not None:
                on_done(done, len(suite.probes))
            return Attempt(probe, text, value, value >= 0.5, tokens, finish, time.perf_counter() - started)

    tasks = [asyncio.ensure_future(one(p)) for p in suite.probes]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def outcomes(attempts: list[Attempt]) -> dict[str, list[bool]]:
    """family -> hit per probe, in suite order."""
    out: dict[str, list[bool]] = {}
    for a in attempts:
        out.setdefault(a.probe.family, []).append(a.hit)
    return out
