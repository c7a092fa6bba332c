"""The engine seam: everything servicers know about an engine.

Only ``bastion.engine`` imports vllm. Servicers talk to an :class:`EnginePool` of :class:`Engine`
objects through the plain dataclasses below, so a fake engine can stand in for gRPC-layer tests and a
pool of replicas can stand behind the same interface later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from bastion.errors import NotFound

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class ChatTurn:
    role: Role
    content: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    digest: str  # "blake3:<hex>"
    max_context: int
    device: str  # "cpu" | "cuda"
    path: str = ""
    adapters: tuple[str, ...] = ()  # LoRA adapters served with this model (model.adapters)
    # The OMS subject digest of the model's signature ("sha256:<hex>"); "" for an unsigned model.
    subject_digest: str = ""
    # adapter name -> "blake3:<hex>" digest of its directory (the subject of its attestation).
    adapter_digests: tuple[tuple[str, str], ...] = ()

    def digest_set(self) -> dict[str, str]:
        """The in-toto digest set that names this model: {"blake3": hex, "sha256": hex (signed only)}."""
        out = dict([self.digest.split(":", 1)])
        if self.subject_digest:
            algo, value = self.subject_digest.split(":", 1)
            out[algo] = value
        return out

    def adapter_digest(self, name: str) -> str | None:
        return dict(self.adapter_digests).get(name)


@dataclass(frozen=True)
class SamplingSpec:
    """Validated sampling parameters (see bastion.server.validation)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int = 0
    # Log-probabilities of the prompt's tokens with this many top alternatives; None: not asked.
    prompt_logprobs: int | None = None
    # Run to max_tokens past the end-of-sequence token (stop strings still apply).
    ignore_eos: bool = False
    # Tokens per streamed output after the first (the last output carries what remains); the engine's own
    # setting is a floor.
    stream_interval: int = 1


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingSpec
    # The tenant's partition tag (bastion.isolation.tag); set by the server only.
    cache_salt: str | None = None
    # A LoRA adapter of this model (ModelInfo.adapters) the tenant's policy allows; None: the base model.
    adapter: str | None = None


@dataclass(frozen=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    # Each token's text as the tokenizer decodes it alone: ``token_id``'s, then ``top``'s in order ("" when
    # the engine did not decode it).
    token: str = ""
    top_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineOutput:
    """One streamed step: the delta since the previous output of the same request."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...] = ()
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative
    cached_prompt_tokens: int = 0
    # With SamplingSpec.prompt_logprobs, on the first output only: the prompt's tokens after the first.
    prompt_logprobs: tuple[TokenLogprobs, ...] = ()
    # The Serve replica that produced this output (set on a stream's first output by bastion.cluster);
    # "" in one process.
    replica: str = ""


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # fraction of KV blocks in use, 0..1
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """One served model. Implementations: VllmEngine (real), FakeEngine (tests)."""

    @property
    def info(self) -> ModelInfo: ...

    def is_ready(self) -> bool: ...

    def is_dead(self) -> bool: ...

    async def tokenize(
        self, prompt: str | None, conversation: Sequence[ChatTurn] | None, *, raw_special_tokens: bool = False
    ) -> list[int]:
        """Token ids of a raw prompt, or of a conversation rendered with the chat template. Message contents
        never produce special tokens; a raw prompt's special-token strings are parsed only with
        ``raw_special_tokens`` (the tenant's policy), else tokenized as ordinary text."""
        ...

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Streams outputs; the last one has finished=True. Closing the iterator early aborts."""
        ...

    async def abort(self, request_id: str) -> None: ...

    async def prompt_logprobs(self, request_id: str, token_ids: Sequence[int]) -> list[float]:
        """The log-probability of each token after the first given those before it, from the engine's own
        forward pass (the prefix cache not read): what the drift monitor scores."""
        ...

    def stats(self) -> EngineStats: ...

    async def shutdown(self) -> None: ...


class EnginePool:
    """Engines by served name. Today one engine per model; replicas later sit behind the same lookup."""

    def __init__(self, engines: Sequence[Engine] = ()) -> None:
        self._engines: dict[str, Engine] = {}
        for e in engines:
            self.add(e)

    def add(self, engine: Engine) -> None:
        self._engines[engine.info.name] = engine

    def get(self, name: str) -> Engine:
        try:
            return self._engines[name]
        except KeyError:
            raise NotFound(public="model not found") from None

    def all(self) -> list[Engine]:
        return list(self._engines.values())

    def is_ready(self) -> bool:
        return bool(self._engines) and all(e.is_ready() and not e.is_dead() for e in self._engines.values())

    def any_dead(self) -> bool:
        return any(e.is_dead() for e in self._engines.values())

    def attach_audit(self, recorder: Any) -> None:
        """The server's audit recorder, for a pool whose engines have events of their own to record (Serve
        replicas joining and leaving: ``bastion.cluster.pool``). Engines in this process have none."""

    async def shutdown(self) -> None:
        for e in self._engines.values():
            await e.shutdown()
