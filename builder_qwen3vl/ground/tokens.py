"""Qwen3-VL's special tokens and the image placeholder in prompts: facts of the released vocabulary, and
how a user's text stays text (``plain_text``)."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from .bundle_paths import MAX_TOKENIZER_BYTES, bundle_file, read_bundle_json
from .contract import TOKENIZER_JSON

log = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
# One per image in a prompt: og's processor (and HF's) expands the pad to t*h*w/4 copies.
IMAGE_TAG = VISION_START + IMAGE_PAD + VISION_END
VIDEO_TAG = VISION_START + VIDEO_PAD + VISION_END  # one per video (runtime.video expands it)
ENDOFTEXT_ID = 151643  # <|endoftext|>: also the pad token of the released generation_config
IM_START_ID = 151644  # <|im_start|>: opens a turn
IM_END_ID = 151645  # <|im_end|>: the end of an assistant turn
VISION_START_ID = 151652
VISION_END_ID = 151653
IMAGE_TOKEN_ID = 151655  # <|image_pad|>
VIDEO_TOKEN_ID = 151656  # <|video_pad|>
EOS_IDS = (IM_END_ID, ENDOFTEXT_ID)  # the released generation_config's eos_token_id list

# The released tokenizer.json's added tokens with "special": true: the control tokens (turns, end of text,
# vision markers and placeholders, grounding boxes). Its other added tokens (<tool_call>, <think>, <|fim_*|>, ...)
# are "special": false: markup the model reads inside a message, never a turn or a placeholder.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    IMAGE_PAD, VIDEO_PAD,
)
# U+200B ZERO WIDTH SPACE: no token of the vocabulary holds it inside a special token's text, so one after the
# first character makes the tokenizer read the rest as ordinary BPE text; it prints as nothing.
TOKEN_BREAK = "\u200b"


def plain_text(text: str, special_tokens: Iterable[str] = SPECIAL_TOKENS) -> str:
    """``text`` with every special token written so that the tokenizer reads it as plain text.

    A prompt is one string that og's tokenizer encodes whole, matching special tokens anywhere in it, so a user's
    ``<|image_pad|>`` or ``<|im_end|>`` would otherwise become a placeholder (og then fails: more placeholders
    than images) or close the turn and open a new one. Breaking each with a zero-width space keeps what the
    user sees, and gives the model the characters (ordinary BPE tokens) instead of the control token; refusing
    the prompt instead would fail questions about these tokens themselves. The released list is always
    included; ``special_tokens`` adds a bundle's own (``special_tokens(bundle)``). Non-special added tokens
    (``<think>``, ``<tool_call>``) stay as they are, as HF's tokenizer keeps them. ValueError (one line) for a
    special token that cannot be broken (one character long): never the case in Qwen's vocabulary.
    """
    tokens = _tokens(frozenset(special_tokens))
    out = _pattern(tokens).sub(lambda m: m[0][0] + TOKEN_BREAK + m[0][1:], text) if tokens else text
    left = next((t for t in tokens if t in out), None)
    if left is not None:
        raise ValueError(f"the prompt holds {left!r}, a special token of the tokenizer that cannot be written as plain text")
    return out


def special_tokens(bundle: str | Path) -> tuple[str, ...]:
    """The special added tokens of the bundle's tokenizer.json (``"special": true``) with the released ones.

    The released list alone when tokenizer.json is missing or not the JSON HF writes (og then refuses to load
    the bundle and says why); a tokenizer.json outside the bundle folder is a ``BundlePathError``."""
    path = bundle_file(bundle, TOKENIZER_JSON)
    try:
        added = read_bundle_json(path, MAX_TOKENIZER_BYTES)["added_tokens"]
        found = tuple(t["content"] for t in added if t.get("special") and isinstance(t.get("content"), str))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.debug("%s: no added_tokens read (%s); using the released special tokens", path, e)
        return SPECIAL_TOKENS
    return SPECIAL_TOKENS + tuple(t for t in found if t not in SPECIAL_TOKENS)


@functools.lru_cache(maxsize=8)
def _tokens(given: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted({*SPECIAL_TOKENS, *(t for t in given if t)}, key=lambda t: (-len(t), t)))


@functools.lru_cache(maxsize=8)
def _pattern(tokens: tuple[str, ...]) -> re.Pattern[str]:
    """Longest first: a token that holds another is broken whole."""
    return re.compile("|".join(re.escape(t) for t in tokens))
