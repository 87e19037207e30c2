"""Initial weights of the random test checkpoints, one tensor at a time.

The tiny trained model (builder_qwen3vl/shipped/) starts from these values: the recipe's fingerprint
(tools/tiny_model/fingerprint.py) hashes the initial weights, so a change to the values here fails
its replay and needs a retrain; an edit that keeps the values does not.
"""

from __future__ import annotations

import zlib
from typing import Any


def random_tensor(name: str, shape: tuple[int, ...], seed: int, dtype: Any) -> Any:
    """Deterministic per tensor (seeded by its name), whatever the sharding or order.

    Scales keep activations O(1) so parity tests compare numbers that mean something:
    linear/conv weights ~ N(0, 1/fan_in), embedding tables ~ N(0, 1), norm weights ~ 1 + N(0, 0.1^2),
    biases ~ N(0, 0.1^2).
    """
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    if len(shape) == 1:
        values = torch.randn(shape, generator=gen) * 0.1
        if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or name.endswith("layernorm.weight"):
            values += 1.0
    elif name.endswith("embed_tokens.weight") or name.endswith("pos_embed.weight"):
        values = torch.randn(shape, generator=gen)
    else:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        values = torch.randn(shape, generator=gen) / fan_in**0.5
    return values.to(dtype)
