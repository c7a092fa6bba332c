"""The drift monitor's secret: the canaries it scores and the key that authenticates its baselines.

**Why secret.** Twenty fixed, published canary texts let a tampered model (or anything on the serving path)
recognise the monitor's prompts and keep exactly those log-probabilities while behaving differently on
everything else. Here every canary is drawn from a secret: 32 random bytes in ``assurance.drift.seed_file``
(default ``<cache_dir>/keys/drift.key``, created 0600 on first start; a configured file must exist). From it,
HKDF-SHA256 (salt :data:`SALT`, one ``info`` label each, so no key is another's) derives:

- the *canary key*: a deterministic stream (HMAC-SHA256 in counter mode, per canary) that picks each canary's
  sentences from a grammar of templates and word lists (about 2^40 sentences; a canary is two to five of
  them), so an outsider cannot tell a canary from ordinary prose, let alone predict one;
- the *baseline key*: HMAC-SHA256 over a baseline's canonical bytes (:mod:`bastion.assurance.drift`);
- the *seed id*: 128 bits that name the secret in files, logs and the audit log (never the secret).

**Two kinds of canary.** ``raw``: a text and its continuation, as one prompt. ``chat``: a conversation (a
user message, sometimes after a system message) rendered with the model's own chat template, and the
assistant's reply as the continuation, so a template that was swapped or a model that answers differently in
the chat format it is served in moves the numbers too. How many of each and how long (``canaries``,
``chat_canaries``, ``canary_words``) are settings; changing them, or this generator (:data:`GENERATOR`),
changes the canary set, which the baseline names (:meth:`DriftSecret.canary_set_id`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.assurance.settings import DriftSettings
from bastion.engine.protocol import ChatTurn
from bastion.errors import ConfigError
from bastion.files import atomic_write, open_regular

GENERATOR = "bastion-drift-canaries/1"
SEED_BYTES = 32
SALT = b"bastion.assurance.drift.v1"
CANARY_INFO = b"bastion drift canaries v1"
BASELINE_MAC_INFO = b"bastion drift baseline mac v1"
SEED_ID_INFO = b"bastion drift seed id v1"
MAC_PREFIX = "hmac-sha256:"
_T = TypeVar("_T")


def _hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=SALT, info=info).derive(secret)


class DriftSecret:
    """The keys derived from the drift seed. Holds no file; never logs or returns the secret."""

    __slots__ = ("_canary_key", "_mac_key", "seed_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SEED_BYTES:
            raise ValueError(f"the drift seed must be {SEED_BYTES} bytes")
        self._canary_key = _hkdf(secret, CANARY_INFO)
        self._mac_key = _hkdf(secret, BASELINE_MAC_INFO)
        self.seed_id = _hkdf(secret, SEED_ID_INFO, 16).hex()

    def __repr__(self) -> str:
        return f"DriftSecret(seed_id={self.seed_id})"

    def mac(self, data: bytes) -> str:
        """``hmac-sha256:<hex>`` of ``data`` under the baseline key."""
        return MAC_PREFIX + hmac.new(self._mac_key, data, hashlib.sha256).hexdigest()

    def verify(self, data: bytes, mac: object) -> bool:
        return isinstance(mac, str) and hmac.compare_digest(self.mac(data), mac)

    def canaries(self, settings: DriftSettings) -> tuple[Canary, ...]:
        """The canary set for these settings: ``settings.canaries`` canaries, the first
        ``settings.chat_canaries`` of them chat-templated, each at most ``settings.canary_words`` words."""
        out = []
        for i in range(settings.canaries):
            kind: Literal["raw", "chat"] = "chat" if i < settings.chat_canaries else "raw"
            out.append(_make(_Draw(self._canary_key, i), f"c{i:03d}", kind, settings.canary_words))
        return tuple(out)

    def canary_set_id(self, canaries: Sequence[Canary]) -> str:
        """A MAC over the generator and every canary's text (names the set without revealing it)."""
        body: list[object] = [GENERATOR]
        for c in canaries:
            body.append([c.id, c.kind, c.prompt, [[t.role, t.content] for t in c.turns], c.continuation])
        return self.mac(json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode())


def load_secret(settings: DriftSettings, cache_dir: Path) -> DriftSecret:
    """The drift seed from ``settings.seed_file``, or the default file (created 0600, directory 0700, when
    absent). A regular file (not a symlink) of exactly 32 bytes, mode 0600 or 0400; ConfigError otherwise."""
    configured = settings.seed_file
    path = configured or cache_dir / "keys" / "drift.key"
    if configured is None and not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Published whole or not at all; a concurrent start that created it first wins (same seed for both).
        with contextlib.suppress(FileExistsError):
            atomic_write(path, secrets.token_bytes(SEED_BYTES), mode=0o600, overwrite=False)
    where = f"assurance.drift.seed_file {path}"
    try:
        fd = open_regular(path)  # O_NOFOLLOW: a symlink is refused; fstat of the open file: no swap between
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot open ({exc.strerror or 'not a regular file'}; symlinks are refused)"
        ) from None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode not in (0o600, 0o400):
            raise ConfigError(f"{where}: mode {mode:04o}; must be 0600 or 0400")
        data = f.read(SEED_BYTES + 1)
    if len(data) != SEED_BYTES:
        raise ConfigError(f"{where}: must hold exactly {SEED_BYTES} bytes")
    return DriftSecret(data)


@dataclass(frozen=True)
class Canary:
    """One canary: ``raw`` (``prompt`` then ``continuation``) or ``chat`` (``turns`` rendered with the chat
    template, then the assistant's ``continuation``). Only the continuation's tokens are scored."""

    id: str
    kind: Literal["raw", "chat"]
    prompt: str
    turns: tuple[ChatTurn, ...]
    continuation: str

    def conversation(self) -> tuple[ChatTurn, ...]:
        """The chat canary with the assistant's reply as its last turn."""
        return (*self.turns, ChatTurn(role="assistant", content=self.continuation))


class _Draw:
    """A deterministic stream of choices: HMAC-SHA256(canary key, label ‖ canary index ‖ block counter)."""

    def __init__(self, key: bytes, index: int) -> None:
        self._key, self._index, self._block, self._buf = key, index, 0, b""

    def _bytes(self, n: int) -> bytes:
        while len(self._buf) < n:
            msg = b"canary\x00" + self._index.to_bytes(4, "big") + self._block.to_bytes(8, "big")
            self._buf += hmac.new(self._key, msg, hashlib.sha256).digest()
            self._block += 1
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def below(self, n: int) -> int:
        """Uniform in [0, n) (rejection sampling: no modulo bias)."""
        limit = (1 << 32) - (1 << 32) % n
        while True:
            v = int.from_bytes(self._bytes(4), "big")
            if v < limit:
                return v % n

    def pick(self, words: Sequence[_T]) -> _T:
        return words[self.below(len(words))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _sentence(d: _Draw) -> str:
    """One sentence from the grammar (every template ends with a full stop or a question mark)."""
    name, name2 = d.pick(NAMES), d.pick(NAMES)
    noun, noun2 = d.pick(NOUNS), d.pick(NOUNS)
    adj, adj2 = d.pick(ADJECTIVES), d.pick(ADJECTIVES)
    base, past = d.pick(VERBS)
    place, prep, when = d.pick(PLACES), d.pick(PREPOSITIONS), d.pick(TIMES)
    number, adverb = d.pick(NUMBERS), d.pick(ADVERBS)
    templates = (
        f"{name} {past} the {adj} {noun} {prep} the {place}.",
        f"The {noun} {prep} the {place} was {adj} and {adj2}.",
        f"{_cap(when)}, {name} found {number} {adj} {noun}s near the {place}.",
        f"Nobody expected the {noun} to be so {adj}.",
        f"{name} and {name2} {past} {_a(adj)} {noun} {when}.",
        f"After the {noun}, the {place} felt {adj}.",
        f"Why did {name} {base} the {noun2} {prep} the {place}?",
        f"{name} said that the {noun} was {adverb} {adj}.",
        f"There were {number} {noun}s {prep} the {adj} {place}.",
        f"The {adj} {noun} was {adverb} close to the {noun2}.",
        f"{_cap(when)}, the {place} smelled of {adj} {noun}s.",
        f"{name} wanted to {base} {_a(noun)} before {name2} did.",
    )
    return d.pick(templates)


def _words(text: str) -> int:
    return len(text.split())


def _sentences(d: _Draw, budget: int) -> str:
    """At least one sentence, then more while they fit in ``budget`` words (a drawn target, up to it)."""
    target = budget // 2 + d.below(budget - budget // 2 + 1)
    out = [_sentence(d)]
    while True:
        nxt = _sentence(d)
        if _words(" ".join(out)) + _words(nxt) > target:
            return " ".join(out)
        out.append(nxt)


def _make(d: _Draw, cid: str, kind: Literal["raw", "chat"], max_words: int) -> Canary:
    """A canary of at most ``max_words`` words in all (its prompt or messages, and its continuation)."""
    if kind == "raw":
        continuation = _sentences(d, min(max_words // 2, 2 * MAX_SENTENCE_WORDS))
        return Canary(cid, kind, _sentences(d, max_words - _words(continuation)), (), " " + continuation)
    turns: list[ChatTurn] = []
    if d.below(2):
        turns.append(ChatTurn(role="system", content=f"You are {_a(d.pick(TONES))} assistant. {d.pick(STYLES)}"))
    ask = d.pick(ASKS)
    # The fixed phrases take at most 20 words; canary_words >= 48 leaves at least 28 for the drawn sentences.
    prose = max_words - sum(_words(t.content) for t in turns) - _words(ask.format(""))
    continuation = _sentences(d, min(prose // 2, 2 * MAX_SENTENCE_WORDS))
    turns.append(ChatTurn(role="user", content=ask.format(_sentences(d, prose - _words(continuation)))))
    return Canary(cid, kind, "", tuple(turns), continuation)


MAX_SENTENCE_WORDS = 12

# The grammar's words: common, regular English (every noun's plural is noun + "s"). Part of GENERATOR.
NAMES = (
    "Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemal", "Lena",
    "Marco", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samir", "Tara", "Umar", "Vera", "Walter", "Yara",
    "Zoe", "Mia", "Leo", "Ivan", "Sofia", "Tomas", "Amir", "Nora",
)  # fmt: skip
NOUNS = (
    "apple", "basket", "bicycle", "book", "bottle", "bridge", "candle", "car", "chair", "cloud", "coat",
    "cup", "desk", "door", "drawer", "engine", "feather", "flower", "garden", "gate", "guitar", "hammer",
    "hat", "helmet", "island", "jacket", "kettle", "key", "kite", "ladder", "lamp", "letter", "map",
    "mirror", "needle", "notebook", "orange", "painting", "pencil", "piano", "pillow", "plate", "pocket",
    "radio", "ribbon", "river", "road", "rock", "rope", "sandwich", "shell", "shoe", "signal", "spoon",
    "stamp", "star", "stone", "table", "teacup", "ticket", "towel", "tower", "train", "tree", "trumpet",
    "tunnel", "umbrella", "violin", "wagon", "wall", "window", "wire", "word", "yard", "blanket", "bucket",
    "button", "camera", "carpet", "cookie", "diary", "envelope", "fountain", "lantern", "marble", "necklace",
    "parcel", "puzzle", "rocket", "sail", "saucer", "sweater", "tent", "whistle", "wheel",
)  # fmt: skip
ADJECTIVES = (
    "old", "new", "quiet", "loud", "bright", "dark", "small", "large", "heavy", "light", "warm", "cold",
    "strange", "familiar", "broken", "shiny", "dusty", "wet", "dry", "soft", "rough", "narrow", "wide",
    "green", "blue", "red", "yellow", "grey", "golden", "wooden", "tiny", "enormous", "careful", "curious",
    "gentle", "hidden", "empty", "crowded", "sudden", "slow", "quick", "ancient", "modern", "simple",
    "clever", "round", "square", "sharp", "calm", "busy", "lonely", "cheerful", "polished", "faded",
    "fragile", "sturdy", "silver", "crooked", "plain", "odd", "early", "late", "distant", "nearby",
)  # fmt: skip
VERBS = (
    ("carry", "carried"), ("paint", "painted"), ("open", "opened"), ("close", "closed"), ("clean", "cleaned"),
    ("fix", "fixed"), ("move", "moved"), ("follow", "followed"), ("watch", "watched"), ("borrow", "borrowed"),
    ("lift", "lifted"), ("pull", "pulled"), ("push", "pushed"), ("count", "counted"), ("visit", "visited"),
    ("measure", "measured"), ("polish", "polished"), ("wrap", "wrapped"), ("collect", "collected"),
    ("notice", "noticed"), ("describe", "described"), ("repair", "repaired"), ("fill", "filled"),
    ("return", "returned"), ("hide", "hid"), ("find", "found"), ("keep", "kept"), ("sell", "sold"),
    ("build", "built"), ("draw", "drew"), ("throw", "threw"), ("bring", "brought"), ("catch", "caught"),
    ("forget", "forgot"), ("leave", "left"), ("hold", "held"),
)  # fmt: skip
PLACES = (
    "kitchen", "station", "harbour", "library", "market", "school", "hospital", "bakery", "museum", "park",
    "village", "office", "garage", "cellar", "attic", "hallway", "beach", "forest", "farm", "square",
    "theatre", "workshop", "post office", "bus stop", "playground", "hotel", "castle", "lighthouse",
    "meadow", "valley", "corner shop", "balcony",
)  # fmt: skip
PREPOSITIONS = (
    "in", "near", "behind", "beside", "outside", "inside", "across", "under", "above", "next to", "far from",
    "opposite", "around", "along", "past", "towards",
)  # fmt: skip
TIMES = (
    "on Monday", "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday", "on Sunday",
    "in the morning", "in the evening", "at noon", "at midnight", "last winter", "last summer",
    "in the spring", "in the autumn", "yesterday", "early today", "late at night", "after lunch",
    "before dinner", "during the storm", "after the rain", "in January", "in July",
)  # fmt: skip
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "twenty")
ADVERBS = (
    "very", "rather", "quite", "surprisingly", "almost", "really", "slightly", "oddly", "perfectly", "hardly",
    "truly", "unusually",
)  # fmt: skip
ASKS = (
    "Continue this story: {}",
    "{} What happened next?",
    "Read this and answer with one or two sentences of your own. {}",
    "{} Tell me more.",
    "Here is a note: {}",
)
STYLES = ("Answer in plain sentences.", "Keep your answers short.", "Write simply.")
TONES = ("patient", "careful", "friendly", "concise", "cheerful", "thoughtful", "polite", "calm", "honest")
