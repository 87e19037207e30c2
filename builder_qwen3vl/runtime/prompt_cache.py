"""Kept og generators that a next request continues when its prompt starts with what one of them has processed.

llama-server and OpenVINO GenAI keep a conversation's KV cache between requests the same way: a request whose
token ids begin with the ids a kept generator holds, under the same pictures, keeps that work (the pictures'
vision encoding and the prefill) and feeds only the rest (``append_tokens``).

The ids compared are the *logical* ids: the prompt as the tokenizer writes it, one ``<|image_pad|>`` per picture
(``tokenizer.encode`` of the chat template's text), then the answer. og's generator holds the pictures expanded (one
pad per vision feature row); ``extra`` is that difference, so a logical position ``n`` after the last picture is
the generator's position ``n + extra``. Pictures are compared by the SHA-256 of their bytes, in order: the same
text under a different picture never matches. A picture cannot be appended as tokens (og takes pixels only through
``set_inputs``), so a match must hold every picture of the new prompt; a prompt with a new picture starts anew.

What the KV cache holds after an answer follows ``conversation.Conversation``'s two og facts: an answer that ends on
an end-of-turn token holds every answer token (the end token itself is never fed); an answer cut short (token
budget, stop text, a client gone) leaves its last token in the sequence but not in the cache. ``kv_ids`` is what
the cache holds; ``continue_with`` rewinds the generator to the kept prefix (``rewind_to``) and feeds the rest, so a
cut answer, or a client that sends back a shorter text (a stop string), still reuses everything before it.

Generators made with other search options (sampling, a seed, a minimum length) are not interchangeable: an entry
carries its options and matches only the same. The number of kept generators is bounded (least recently used
goes first); each holds a KV cache sized by its ``max_length`` (``kv_cache_bytes``), its ``capacity`` here: og cannot
grow it later, so an entry serves a request only when the request's prompt and answer fit in it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class CachedGenerator:
    """An og generator after an answer, and what its KV cache holds."""

    generator: Any
    kv_ids: list[int]  # logical ids in the KV cache: prompt (one pad per picture) and the answer's processed tokens
    pictures: tuple[str, ...]  # SHA-256 of each picture's bytes, in prompt order
    extra: int  # the generator's positions minus logical ids: the pictures' pad runs beyond one pad each
    options: Hashable  # the search options the generator was made with
    capacity: int  # the generator's max_length: the positions its KV cache holds


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reusable(entry: CachedGenerator, ids: Sequence[int], pictures: tuple[str, ...], options: Hashable, pad_id: int,
             answer_tokens: int = 1, max_length: int | None = None) -> int:
    """How many of ``ids`` (a new prompt's logical ids) ``entry`` holds and can keep; 0 when it cannot serve them.

    At least one id is left to feed (a generator needs new input to give the next token's logits), every
    picture pad of ``ids`` must lie in the kept part (pictures are not appended as tokens), and the prompt with its
    answer (``answer_tokens``, or what ``max_length`` leaves of them) must fit in the entry's capacity."""
    if entry.pictures != pictures or entry.options != options:
        return 0
    positions = len(ids) + entry.extra
    room = answer_tokens if max_length is None else min(answer_tokens, max_length - positions)
    if positions + max(room, 1) > entry.capacity:
        return 0
    keep = min(common_prefix(entry.kv_ids, ids), len(ids) - 1)
    last_pad = max((i for i, t in enumerate(ids) if t == pad_id), default=-1)
    return keep if keep > last_pad and keep > 0 else 0


def collapse_pads(ids: Sequence[int], pad_id: int) -> list[int]:
    """og's processor ids with each run of picture pads as one pad: the logical ids of ``encode(text)``."""
    return [t for i, t in enumerate(ids) if t != pad_id or i == 0 or ids[i - 1] != pad_id]


def continue_with(entry: CachedGenerator, ids: Sequence[int], keep: int) -> None:
    """Rewind ``entry``'s generator to its first ``keep`` logical ids and feed the rest of ``ids``."""
    generator = entry.generator
    position = keep + entry.extra
    if position < len(generator.get_sequence(0)):
        generator.rewind_to(position)
    generator.append_tokens([int(t) for t in ids[keep:]])
    entry.kv_ids = list(ids)


class PromptCache:
    """At most ``slots`` kept generators, least recently used dropped first. Thread-safe: ``take`` hands an
    entry to one request (it leaves the cache until ``put`` back), so two requests never share a generator."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._entries: OrderedDict[int, CachedGenerator] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, ids: Sequence[int], pictures: tuple[str, ...], options: Hashable, pad_id: int,
             answer_tokens: int = 1, max_length: int | None = None) -> tuple[CachedGenerator | None, int]:
        """The entry that holds the longest usable prefix of ``ids`` and that prefix's length, or (None, 0)
        (``reusable`` says which entries can serve the request)."""
        with self._lock:
            best, keep = None, 0
            for key, entry in self._entries.items():
                n = reusable(entry, ids, pictures, options, pad_id, answer_tokens, max_length)
                if n > keep:
                    best, keep = key, n
            if best is None:
                self.misses += 1
                return None, 0
            self.hits += 1
            return self._entries.pop(best), keep

    def put(self, entry: CachedGenerator) -> None:
        """Keep ``entry`` as the most recently used; the least recently used goes when over ``slots``."""
        if self.slots < 1:
            return
        with self._lock:
            self._entries[id(entry)] = entry
            while len(self._entries) > self.slots:
                self._entries.popitem(last=False)


def kv_cache_bytes(genai_config: dict[str, Any], max_length: int | None = None, bytes_per_value: int = 4) -> int:
    """One generator's KV cache: layers x 2 (key, value) x kv_heads x head_dim x max_length x bytes per value
    (og sizes the buffer by ``max_length`` when ``past_present_share_buffer`` is on; float32 on CPU)."""
    decoder = genai_config["model"]["decoder"]
    length = int(max_length or genai_config["search"]["max_length"])
    return (int(decoder["num_hidden_layers"]) * 2 * int(decoder["num_key_value_heads"]) * int(decoder["head_size"])
            * length * bytes_per_value)
