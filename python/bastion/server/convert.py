"""Conversions between the protobuf messages and the engine seam's dataclasses."""

from __future__ import annotations

from bastion.engine.protocol import EngineOutput, ModelInfo, Role, TokenLogprobs
from bastion.v1 import inference_pb2 as pb

# Proto role values accepted in a conversation; ROLE_UNSPECIFIED and unknown values are refused.
ROLES: dict[int, Role] = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
}

FINISH_REASONS: dict[str, pb.FinishReason] = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "abort": pb.FINISH_REASON_ABORT,
}


def model_info(info: ModelInfo, release: str = "", adapters: list[tuple[str, str, str]] | None = None) -> pb.ModelInfo:
    """``adapters``: (name, digest, release) of the adapters the caller may use."""
    return pb.ModelInfo(
        name=info.name,
        digest=info.digest,
        max_context=info.max_context,
        device=info.device,
        subject_digest=info.subject_digest,
        release=release,
        adapters=[pb.AdapterInfo(name=n, digest=d, release=r) for n, d, r in adapters or ()],
    )


def usage(prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_prompt_tokens=cached_prompt_tokens,
    )


def _logprobs(entry: pb.GeneratedTokenLogprobs, lp: TokenLogprobs) -> None:
    entry.sampled.token_id = lp.token_id
    entry.sampled.logprob = lp.logprob
    entry.sampled.token = lp.token
    texts = lp.top_tokens if len(lp.top_tokens) == len(lp.top) else ("",) * len(lp.top)
    for (token_id, logprob), text in zip(lp.top, texts, strict=True):
        entry.top.add(token_id=token_id, logprob=logprob, token=text)


def delta(request_id: str, out: EngineOutput, *, digest: str = "") -> pb.GenerateResponse:
    """One streamed message from one engine step (finish fields are added by the caller)."""
    msg = pb.GenerateResponse(request_id=request_id, text=out.text, token_ids=out.token_ids, model_digest=digest)
    for lp in out.logprobs:
        _logprobs(msg.logprobs.add(), lp)
    for lp in out.prompt_logprobs:
        _logprobs(msg.prompt_logprobs.add(), lp)
    return msg


def finish_reason(reason: str | None) -> pb.FinishReason:
    """Unknown or missing reasons from an engine map to STOP only when the engine said it finished."""
    return FINISH_REASONS.get(reason or "stop", pb.FINISH_REASON_STOP)
