"""Placeholder tokenizer files, for checkpoints whose tests never tokenize (reader and CLI rules): the smallest
tokenizer the tokenizers library loads (two tokens, no merges)."""

from __future__ import annotations

import json
from pathlib import Path


def write_stub_tokenizer(folder: Path) -> None:
    """Placeholder tokenizer files for tests that exercise only the reader or CLI rules."""
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Qwen2Tokenizer"}))
