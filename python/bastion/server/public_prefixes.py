"""Operator-declared public prefixes: the only prompt blocks tenants share (``[[public_prefixes]]`` in the
tenancy policy, each pinned by its SHA-256).

A request uses a declared prefix when its plain prompt starts with the text, or when its conversation opens
with a system turn whose content is exactly the text. The shared region is then the longest common run of
token ids between the request and the prefix rendered the same way alone (minus its last token, which may
merge with what follows): those tokens are the public text and the chat template, nothing of the tenant's.
The EngineCore rounds it down to whole blocks and keys those blocks in the public partition; every block
after it is keyed by the tenant (``bastion.engine.vllm.block_hasher``).
"""

from __future__ import annotations

from collections.abc import Sequence

from bastion.engine.protocol import ChatTurn, Engine
from bastion.tenancy.policy import PublicPrefix

MAX_CACHED = 1024


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PublicPrefixMatcher:
    """Finds how many leading tokens of a request are public; reference tokenizations are cached."""

    def __init__(self) -> None:
        self._ref: dict[tuple[str, str, str], tuple[int, ...]] = {}

    async def _reference(self, engine: Engine, model: str, prefix: PublicPrefix, shape: str) -> tuple[int, ...]:
        key = (model, prefix.sha256, shape)
        ref = self._ref.get(key)
        if ref is None:
            if shape == "prompt":
                ids = await engine.tokenize(prefix.text, None)
            else:
                ids = await engine.tokenize(None, [ChatTurn("system", prefix.text)])
            if len(self._ref) >= MAX_CACHED:
                self._ref.clear()
            ref = self._ref[key] = tuple(ids)
        return ref

    async def public_tokens(
        self,
        prefixes: Sequence[PublicPrefix],
        engine: Engine,
        model: str,
        prompt: str | None,
        conversation: Sequence[ChatTurn] | None,
        ids: Sequence[int],
    ) -> int:
        best = 0
        for p in prefixes:
            if prompt is not None and prompt.startswith(p.text):
                shape = "prompt"
            elif conversation and conversation[0].role == "system" and conversation[0].content == p.text:
                shape = "chat"
            else:
                continue
            ref = await self._reference(engine, model, p, shape)
            best = max(best, min(common_prefix_len(ids, ref), len(ref) - 1))
        return best
