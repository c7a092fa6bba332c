"""OpenAI request bodies → the ``bastion.v1`` request the gRPC servicer takes, or a refusal naming the field.

The body is parsed strictly: duplicate JSON keys are refused (a proxy and this server must not read two
different requests from one body), every object refuses keys it does not know, and a field that asks for a
tenant, a cache salt or an identity (vLLM's ``cache_salt`` included) is an identity-override attempt
(403, audited as one), as in gRPC metadata. Fields clients send that would change the output are taken
only where the request path implements them (log-probabilities, ``echo`` with the prompt's
log-probabilities), and otherwise refused unless they hold their neutral value (``EXTENSIONS``;
docs/http-api.md). Nothing here reads the value back into an error message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.errors import InvalidArgument, PermissionDenied
from bastion.server.request_checks import FORBIDDEN_KEYS
from bastion.server.validation import ADAPTER_RE
from bastion.v1 import inference_pb2 as pb

# "<model>@<adapter>" names a LoRA adapter served with the model (GET /v1/models lists those the caller may
# use). Neither a served name ([A-Za-z0-9._:-]) nor an adapter's ([A-Za-z0-9._-]) can hold the separator.
ADAPTER_SEPARATOR = "@"
# Top alternatives per token a request may ask for (limits.max_logprobs bounds it again in the servicer).
MAX_TOP_LOGPROBS = 20
# OpenAI's default for /v1/completions (the chat route takes bastion's default, shortened to fit).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# Body fields that would choose a tenant, a salt or an identity: refused like the metadata keys.
IDENTITY_FIELDS = frozenset({k.replace("-", "_") for k in FORBIDDEN_KEYS} | {"cache_salt"})
# Fields accepted only at their neutral value (field -> that value): vLLM's and OpenAI's sampling knobs this
# server does not implement. Any other value is refused (400 naming the field), never silently ignored.
EXTENSIONS: dict[str, object] = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "repetition_penalty": 1,
    "min_p": 0,
    "min_tokens": 0,
    "logit_bias": {},
    "best_of": 1,
    "suffix": None,
    "tools": [],
    "tool_choice": "none",
}
ROLES: dict[str, pb.Role] = {
    "system": pb.ROLE_SYSTEM,
    "developer": pb.ROLE_SYSTEM,
    "user": pb.ROLE_USER,
    "assistant": pb.ROLE_ASSISTANT,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text"]


class _Common(_Strict):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM's extension: -1 or 0 disable it
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)  # an end-user label; does not change the output
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    min_p: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stream_interval: int | None = None  # vLLM's extension: tokens per streamed chunk (1 to 16)
    logit_bias: dict[str, float] | None = None


class ChatRequest(_Common):
    messages: list[Message]
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none"] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None
    logprobs: int | None = None


_R = TypeVar("_R", ChatRequest, CompletionRequest)


@dataclass(frozen=True)
class Parsed:
    """The translated request and what the response needs from the body."""

    request: pb.GenerateRequest
    stream: bool
    include_usage: bool
    # Top alternatives to show per token when log-probabilities were asked (None: not asked).
    logprobs: int | None = None
    # Completions' ``echo``: the prompt precedes the completion (with its log-probabilities when asked).
    echo: bool = False


def model_id(model: str, adapter: str = "") -> str:
    """The HTTP API's name for ``model`` with ``adapter`` (the base model without one)."""
    return f"{model}{ADAPTER_SEPARATOR}{adapter}" if adapter else model


def _model_and_adapter(name: str) -> tuple[str, str]:
    model, sep, adapter = name.partition(ADAPTER_SEPARATOR)
    if sep and not ADAPTER_RE.fullmatch(adapter):
        raise InvalidArgument("model", "the adapter after '@' must be 1 to 64 characters of [A-Za-z0-9._-]")
    return model, adapter


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InvalidArgument("body", "duplicate JSON keys are not accepted")
        out[k] = v
    return out


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body, object_pairs_hook=_no_duplicates)
    except InvalidArgument:
        raise
    except (ValueError, RecursionError):
        raise InvalidArgument("body", "must be a JSON object (UTF-8)") from None
    if not isinstance(value, dict):
        raise InvalidArgument("body", "must be a JSON object (UTF-8)")
    return value


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "list[str]", "int", "float", "bool"):
            continue  # pydantic's union branch names are not fields
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _validated(cls: type[_R], body: dict[str, Any]) -> _R:
    overrides = sorted(k for k in body if k.lower() in IDENTITY_FIELDS)
    if overrides:
        raise PermissionDenied(
            "identity override attempt in the request body",
            public="tenant, cache salt and identity come from credentials only",
        )
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        # A union's branches each report; the deepest location is the one that names the field at fault.
        err = max(exc.errors(include_url=False, include_input=False), key=lambda e: len(e["loc"]))
        problem = "is not a field of this request" if err["type"] == "extra_forbidden" else str(err["msg"])
        raise InvalidArgument(_field(tuple(err["loc"])), problem[:200]) from None


def _neutral(req: _Strict) -> None:
    """Refuses an extension field set to anything but its neutral value."""
    for name in EXTENSIONS:
        if name not in req.model_fields_set:
            continue
        value, neutral = getattr(req, name), EXTENSIONS[name]
        if value is None or value == neutral or (neutral == [] and value == []):
            continue
        shown = json.dumps(neutral)
        raise InvalidArgument(name, f"not supported by this server (only {shown} or unset; see docs/http-api.md)")


def _sampling(req: _Common, max_tokens: int | None) -> pb.SamplingParams:
    s = pb.SamplingParams()
    if max_tokens is not None:
        if max_tokens < 1:
            raise InvalidArgument("max_tokens", "must be at least 1")
        s.max_tokens = min(max_tokens, 2**32 - 1)
    if req.temperature is not None:
        s.temperature = req.temperature
    if req.top_p is not None:
        s.top_p = req.top_p
    if req.top_k is not None:
        if req.top_k < -1:
            raise InvalidArgument("top_k", "must be -1 or 0 (off), or 1 to 1000")
        s.top_k = max(0, min(req.top_k, 2**32 - 1))
    if req.seed is not None:
        if not 0 <= req.seed < 2**63:
            raise InvalidArgument("seed", "must be 0 to 2^63-1")
        s.seed = req.seed
    if req.stop is not None:
        s.stop.extend([req.stop] if isinstance(req.stop, str) else req.stop)
    if req.ignore_eos:
        s.ignore_eos = True
    if req.stream_interval is not None:
        if not 1 <= req.stream_interval < 2**32:
            raise InvalidArgument("stream_interval", "must be between 1 and 16")
        s.stream_interval = req.stream_interval  # the servicer bounds it (limits named there)
    return s


def _content(m: Message) -> str:
    return m.content if isinstance(m.content, str) else "\n".join(p.text for p in m.content)


def _top(field: str, n: int) -> int:
    if not 0 <= n <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(field, f"must be between 0 and {MAX_TOP_LOGPROBS}")
    return n


def chat_request(body: dict[str, Any], client_request_id: str) -> Parsed:
    req = _validated(ChatRequest, body)
    _neutral(req)
    if req.max_tokens is not None and req.max_completion_tokens not in (None, req.max_tokens):
        raise InvalidArgument("max_completion_tokens", "must equal max_tokens when both are set")
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidArgument("top_logprobs", "needs logprobs: true")
    conv = pb.Conversation(messages=[pb.ChatMessage(role=ROLES[m.role], content=_content(m)) for m in req.messages])
    sampling = _sampling(req, req.max_completion_tokens or req.max_tokens)
    top = _top("top_logprobs", req.top_logprobs or 0) if req.logprobs else None
    if top is not None:
        sampling.logprobs = max(1, top)  # the engine returns the sampled token's with at least one alternative
    model, adapter = _model_and_adapter(req.model)
    msg = pb.GenerateRequest(
        model=model, adapter=adapter, conversation=conv, sampling=sampling, client_request_id=client_request_id
    )
    return Parsed(msg, req.stream, bool(req.stream_options and req.stream_options.include_usage), top)


def completion_request(body: dict[str, Any], client_request_id: str) -> Parsed:
    req = _validated(CompletionRequest, body)
    _neutral(req)
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidArgument("prompt", "must be one string (batches of prompts are not accepted)")
        prompt = prompt[0]
    max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    sampling = _sampling(req, max_tokens)
    top = None if req.logprobs is None else _top("logprobs", req.logprobs)
    echo = bool(req.echo)
    if echo and req.stream:
        raise InvalidArgument("echo", "not supported with stream (send the request without stream)")
    if top is not None:
        sampling.logprobs = max(1, top)
        if echo:  # the prompt's own log-probabilities (lm-evaluation-harness's loglikelihood requests)
            sampling.prompt_logprobs = top
    model, adapter = _model_and_adapter(req.model)
    msg = pb.GenerateRequest(
        model=model, adapter=adapter, prompt=prompt, sampling=sampling, client_request_id=client_request_id
    )
    return Parsed(msg, req.stream, bool(req.stream_options and req.stream_options.include_usage), top, echo)


# The gRPC request's field paths (in the servicer's InvalidArgument) as the HTTP body names them.
FIELD_NAMES = (
    ("sampling.max_tokens", "max_tokens"),
    ("sampling.prompt_logprobs", "logprobs"),
    ("sampling.logprobs", "logprobs"),
    ("sampling.", ""),
    ("conversation.messages", "messages"),
    ("conversation", "messages"),
    ("client_request_id", "x-client-request-id"),
    ("adapter", "model"),
)


def http_field(field: str) -> str:
    for grpc_name, http_name in FIELD_NAMES:
        if field.startswith(grpc_name):
            return http_name + field[len(grpc_name) :]
    return field
