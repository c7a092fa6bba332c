"""Request validation: protobuf request -> validated spec, or InvalidArgument.

Pure functions over the request and ``settings.limits``; no engine access. Every message has the form
``"<field path>: <problem with the limit>"`` and never includes the offending value, so a client can
fix its request and nothing it sent is reflected back (or into logs through the error text).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from bastion.config import LimitSettings
from bastion.engine.protocol import ChatTurn, SamplingSpec
from bastion.errors import InvalidArgument
from bastion.server.convert import ROLES
from bastion.server.ids import CLIENT_REQUEST_ID_RE
from bastion.v1 import inference_pb2 as pb

ADAPTER_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

MAX_TEMPERATURE = 2.0
MAX_TOP_K = 1000
MAX_SEED = 2**63 - 1
# Tokens per streamed message a call may ask for (model.stream_interval's bound too).
MAX_STREAM_INTERVAL = 16


@dataclass(frozen=True)
class InputSpec:
    """A validated model name and exactly one input."""

    model: str
    prompt: str | None = None
    conversation: tuple[ChatTurn, ...] | None = None

    @property
    def field(self) -> str:
        """The request field holding the input, for error messages."""
        return "prompt" if self.prompt is not None else "conversation"


@dataclass(frozen=True)
class GenerateSpec:
    input: InputSpec
    sampling: SamplingSpec
    # False when max_tokens took its default: then it is shortened to fit the context instead of refused.
    max_tokens_explicit: bool
    client_request_id: str
    adapter: str | None = None


def _utf8_len_over(text: str, limit: int) -> bool:
    """True when text is longer than limit bytes of UTF-8, encoding only when the answer is unclear."""
    if len(text) > limit:  # every character is at least one byte
        return True
    if len(text) * 4 <= limit:  # every character is at most four bytes
        return False
    return len(text.encode("utf-8")) > limit


def validate_model(name: str, limits: LimitSettings) -> str:
    if not name:
        raise InvalidArgument("model", "is required")
    if _utf8_len_over(name, limits.max_model_name_bytes):
        raise InvalidArgument("model", f"must be at most {limits.max_model_name_bytes} bytes")
    return name


def _validate_conversation(conv: pb.Conversation, limits: LimitSettings) -> tuple[ChatTurn, ...]:
    messages = conv.messages
    if not 1 <= len(messages) <= limits.max_messages:
        raise InvalidArgument("conversation.messages", f"must hold between 1 and {limits.max_messages} messages")
    turns: list[ChatTurn] = []
    total = 0
    for i, m in enumerate(messages):
        role = ROLES.get(m.role)
        if role is None:
            raise InvalidArgument(
                f"conversation.messages[{i}].role", "must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT"
            )
        size = len(m.content.encode("utf-8"))
        if size > limits.max_message_bytes:
            raise InvalidArgument(
                f"conversation.messages[{i}].content", f"must be at most {limits.max_message_bytes} bytes"
            )
        total += size
        if total > limits.max_input_bytes:
            raise InvalidArgument("conversation", f"contents must total at most {limits.max_input_bytes} bytes")
        turns.append(ChatTurn(role=role, content=m.content))
    return tuple(turns)


def validate_input(request: pb.GenerateRequest | pb.TokenizeRequest, limits: LimitSettings) -> InputSpec:
    """The model and the input oneof, shared by Generate and Tokenize."""
    model = validate_model(request.model, limits)
    which = request.WhichOneof("input")
    if which == "prompt":
        prompt = request.prompt
        if not prompt or _utf8_len_over(prompt, limits.max_input_bytes):
            raise InvalidArgument("prompt", f"must be between 1 and {limits.max_input_bytes} bytes")
        return InputSpec(model=model, prompt=prompt)
    if which == "conversation":
        return InputSpec(model=model, conversation=_validate_conversation(request.conversation, limits))
    raise InvalidArgument("input", "one of prompt or conversation is required")


def validate_sampling(s: pb.SamplingParams, limits: LimitSettings) -> tuple[SamplingSpec, bool]:
    """The sampling spec and whether max_tokens was given explicitly."""
    explicit = s.HasField("max_tokens")
    if explicit:
        if not 1 <= s.max_tokens <= limits.max_tokens:
            raise InvalidArgument("sampling.max_tokens", f"must be between 1 and {limits.max_tokens}")
        max_tokens = s.max_tokens
    else:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens)
    spec = SamplingSpec(max_tokens=max_tokens)
    if s.HasField("temperature"):
        if not (math.isfinite(s.temperature) and 0.0 <= s.temperature <= MAX_TEMPERATURE):
            raise InvalidArgument("sampling.temperature", "must be between 0 and 2")
        spec = replace(spec, temperature=float(s.temperature))
    if s.HasField("top_p"):
        if not (math.isfinite(s.top_p) and 0.0 < s.top_p <= 1.0):
            raise InvalidArgument("sampling.top_p", "must be greater than 0 and at most 1")
        spec = replace(spec, top_p=float(s.top_p))
    if s.HasField("top_k"):
        if s.top_k > MAX_TOP_K:
            raise InvalidArgument("sampling.top_k", f"must be between 0 and {MAX_TOP_K} (0 disables it)")
        spec = replace(spec, top_k=s.top_k)
    if s.HasField("seed"):
        if s.seed > MAX_SEED:
            raise InvalidArgument("sampling.seed", "must be at most 2^63-1")
        spec = replace(spec, seed=s.seed)
    if len(s.stop) > limits.max_stop_strings:
        raise InvalidArgument("sampling.stop", f"must hold at most {limits.max_stop_strings} strings")
    for i, stop in enumerate(s.stop):
        if not stop or _utf8_len_over(stop, limits.max_stop_bytes):
            raise InvalidArgument(f"sampling.stop[{i}]", f"must be between 1 and {limits.max_stop_bytes} bytes")
    if s.stop:
        spec = replace(spec, stop=tuple(s.stop))
    if s.HasField("logprobs"):
        if s.logprobs > limits.max_logprobs:
            raise InvalidArgument("sampling.logprobs", f"must be between 0 and {limits.max_logprobs}")
        spec = replace(spec, logprobs=s.logprobs)
    if s.ignore_eos:
        spec = replace(spec, ignore_eos=True)
    if s.HasField("stream_interval"):
        if not 1 <= s.stream_interval <= MAX_STREAM_INTERVAL:
            raise InvalidArgument("sampling.stream_interval", f"must be between 1 and {MAX_STREAM_INTERVAL}")
        spec = replace(spec, stream_interval=s.stream_interval)
    if s.HasField("prompt_logprobs"):
        if s.prompt_logprobs > limits.max_logprobs:
            raise InvalidArgument("sampling.prompt_logprobs", f"must be between 0 and {limits.max_logprobs}")
        spec = replace(spec, prompt_logprobs=s.prompt_logprobs)
    return spec, explicit


def validate_client_request_id(value: str, limits: LimitSettings) -> str:
    limit = limits.max_client_request_id_bytes
    if len(value) > limit or not CLIENT_REQUEST_ID_RE.fullmatch(value):
        raise InvalidArgument("client_request_id", f"must be at most {limit} characters of [A-Za-z0-9._:-]")
    return value


def validate_adapter(value: str) -> str | None:
    if not value:
        return None
    if not ADAPTER_RE.fullmatch(value):
        raise InvalidArgument("adapter", "must be 1 to 64 characters of [A-Za-z0-9._-]")
    return value


def validate_generate(request: pb.GenerateRequest, limits: LimitSettings) -> GenerateSpec:
    input_spec = validate_input(request, limits)
    sampling, explicit = validate_sampling(request.sampling, limits)
    client_id = validate_client_request_id(request.client_request_id, limits)
    return GenerateSpec(
        input=input_spec,
        sampling=sampling,
        max_tokens_explicit=explicit,
        client_request_id=client_id,
        adapter=validate_adapter(request.adapter),
    )


# What a chat template may add around each turn (role markers, separators) and once (a default system
# prompt, the generation prompt), in tokens, on top of the turns' own text.
TEMPLATE_TOKENS_PER_TURN = 16
TEMPLATE_TOKENS_FIXED = 128


def prompt_token_bound(spec: InputSpec) -> int:
    """An upper bound on the prompt's token count, known before tokenizing: its UTF-8 bytes.

    A byte-level BPE tokenizer (GPT-2, Llama 3, Qwen) emits at most one token per byte of text, so the
    byte length bounds what the text becomes; a conversation adds the roles' bytes and the template
    allowance above. The tenant's token bucket is charged with this before the tokenizer runs and
    corrected with the real count after (``bastion.tenancy.guard.Lease.adjust``).
    """
    if spec.prompt is not None:
        return len(spec.prompt.encode("utf-8"))
    turns = spec.conversation or ()
    text = sum(len(t.role.encode("utf-8")) + len(t.content.encode("utf-8")) for t in turns)
    return text + TEMPLATE_TOKENS_PER_TURN * len(turns) + TEMPLATE_TOKENS_FIXED


def fit_context(
    spec: GenerateSpec, prompt_tokens: int, max_context: int, max_prompt_logprobs_tokens: int | None = None
) -> SamplingSpec:
    """Checks the tokenized prompt against the model context (and, when the prompt's log-probabilities are
    asked, against ``max_prompt_logprobs_tokens``); returns the sampling spec to run.

    An explicit max_tokens that does not fit is refused; the default is shortened to what is left.
    """
    field = spec.input.field
    if prompt_tokens < 1:
        raise InvalidArgument(field, "must produce at least 1 token")
    limit = max_prompt_logprobs_tokens
    if spec.sampling.prompt_logprobs is not None and limit is not None and prompt_tokens > limit:
        raise InvalidArgument("sampling.prompt_logprobs", f"only for prompts of at most {limit} tokens")
    if prompt_tokens >= max_context:
        raise InvalidArgument(field, f"must be shorter than the model context of {max_context} tokens")
    room = max_context - prompt_tokens
    if spec.sampling.max_tokens <= room:
        return spec.sampling
    if spec.max_tokens_explicit:
        raise InvalidArgument(
            "sampling.max_tokens",
            f"prompt tokens plus max_tokens must be at most the model context of {max_context} tokens",
        )
    return replace(spec.sampling, max_tokens=room)
