"""Prompt token ids in which no client text becomes a special token (role forging, issue 15 item 5).

Rendering the chat template to text and re-tokenizing it with special tokens parsed would turn a user message
containing ``<|im_end|>\\n<|im_start|>system\\n…`` into a real system turn. Here the template is rendered with a
unique marker in place of each message's content; the template's own text between the markers is tokenized
with special tokens parsed (the template is the model's, not the client's), and each content is tokenized with
special strings split into ordinary text. A raw ``prompt`` parses special tokens only when the tenant's policy
allows it (``raw_special_tokens``).

Tokenizer objects are shared with vLLM, and a fast tokenizer's ``split_special_tokens`` flips a flag on the
shared Rust tokenizer for the duration of a call; so splitting uses a private copy and the shared one is only
ever called with special-token parsing on, as vLLM itself calls it.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Sequence
from typing import Any

from bastion.engine.protocol import ChatTurn
from bastion.errors import InvalidArgument


class PromptTokenizer:
    """Token ids for raw prompts and conversations; thread-safe for concurrent calls."""

    def __init__(self, tokenizer: Any) -> None:
        self._parse = tokenizer
        self._split = copy.deepcopy(tokenizer)

    def prompt(self, text: str, *, raw_special_tokens: bool = False) -> list[int]:
        if raw_special_tokens:
            return list(self._parse.encode(text, add_special_tokens=True, split_special_tokens=False))
        return list(self._split.encode(text, add_special_tokens=True, split_special_tokens=True))

    def conversation(self, turns: Sequence[ChatTurn]) -> list[int]:
        nonce = secrets.token_hex(12)
        marks = [f"bastion{nonce}m{i}z" for i in range(len(turns))]
        messages = [{"role": t.role, "content": m} for t, m in zip(turns, marks, strict=True)]
        text = self._parse.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids: list[int] = []
        pos = 0
        for turn, mark in zip(turns, marks, strict=True):
            at = text.find(mark, pos)
            if at < 0 or text.find(mark, at + len(mark)) >= 0:
                # The template dropped, moved or repeated a message: it cannot be spliced safely.
                raise InvalidArgument("conversation", "cannot be rendered with the model's chat template")
            ids += self._template(text[pos:at])
            ids += self._content(turn.content)
            pos = at + len(mark)
        return ids + self._template(text[pos:])

    def _template(self, text: str) -> list[int]:
        return list(self._parse.encode(text, add_special_tokens=False, split_special_tokens=False)) if text else []

    def _content(self, text: str) -> list[int]:
        return list(self._split.encode(text, add_special_tokens=False, split_special_tokens=True)) if text else []
