"""How the parity tests compare our outputs with HF's: one definition of each figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

Arrays = np.ndarray | list[np.ndarray]


def _rows(x: Arrays) -> np.ndarray:
    """[rows, last dim] in float64: one array, or several (e.g. one per decoder step) stacked."""
    parts = x if isinstance(x, list) else [x]
    return np.concatenate([p.reshape(-1, p.shape[-1]) for p in parts]).astype(np.float64)


def max_abs_diff(a: Arrays, b: Arrays) -> float:
    """max |a - b| over every element; the arrays (or lists of arrays) must have equal shapes."""
    pairs = zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]
    worst = 0.0
    for x, y in pairs:
        if x.shape != y.shape:
            raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
        worst = max(worst, float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max(initial=0.0)))
    return worst


def cosine_and_top1(ref: Arrays, got: Arrays) -> tuple[float, float]:
    """Mean cosine similarity of logit rows and the fraction of rows whose argmax agrees."""
    r, g = _rows(ref), _rows(got)
    cos = (r * g).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1))
    return float(cos.mean()), float((r.argmax(-1) == g.argmax(-1)).mean())


def load_hf_model(ckpt: Path) -> torch.nn.Module:
    """HF's own Qwen3VLForConditionalGeneration in fp32, eval mode: the reference of every parity test."""
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
