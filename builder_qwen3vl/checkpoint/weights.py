"""Loading selected tensors from a checkpoint's safetensors files (no full-model load)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .reader import Checkpoint

if TYPE_CHECKING:
    import torch


def load_tensors(ckpt: Checkpoint, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Read the named tensors, opening each shard once."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_file[str(ckpt.tensors[name].file)].append(name)
    out: dict[str, torch.Tensor] = {}
    for file, file_names in by_file.items():
        with safe_open(file, framework="pt") as f:
            for name in file_names:
                out[name] = f.get_tensor(name)
    return out


def load_prefix(ckpt: Checkpoint, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor whose name starts with ``prefix``, with the prefix stripped."""
    names = [n for n in ckpt.tensors if n.startswith(prefix)]
    return {n[len(prefix):]: t for n, t in load_tensors(ckpt, names).items()}


EMBED_TABLE = "model.language_model.embed_tokens.weight"


def lm_head_is_table(ckpt: Checkpoint) -> bool:
    """Whether the decoder's lm_head is the embedding table, as HF transformers (>= 5) loads the checkpoint.

    Tied configs usually store no lm_head.weight. One that stores a *different* lm_head.weight is not tied by
    transformers (it warns and keeps the stored tensor), nor by og's builder, which reads lm_head.weight.
    """
    if not ckpt.config.text.tie_word_embeddings:
        return False
    if "lm_head.weight" not in ckpt.tensors:
        return True
    import torch

    stored = load_tensors(ckpt, ["lm_head.weight", EMBED_TABLE])
    return bool(torch.equal(stored["lm_head.weight"], stored[EMBED_TABLE]))
