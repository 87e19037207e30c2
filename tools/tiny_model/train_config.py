"""The tiny shapes model's training recipe, as data: ``--set NAME=VALUE`` on train_tiny.py trains a variant.

The shipped model's training record holds these values; its fingerprint check (fingerprint.py) also
compares them, since some (``steps``, the cosine part of the schedule) act only after the replayed steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from builder_qwen3vl.shipped import shapes_task


@dataclass(frozen=True)
class TrainConfig:
    # text decoder
    hidden_size: int = 128
    num_hidden_layers: int = 6  # 4 learned the same except left/right (52 % vs 64 % on 1,000 held-out)
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 512
    # vision tower (DeepStack taps after blocks 0, 1, 2)
    vision_depth: int = 4
    vision_hidden_size: int = 128
    vision_heads: int = 4
    vision_intermediate_size: int = 256
    deepstack_visual_indexes: tuple[int, ...] = (0, 1, 2)
    num_position_embeddings: int = 100  # a 10x10 table: the largest 160 px image has 10x10 patches
    # Processor limits written into the checkpoint's preprocessor_config.json (size.shortest_edge /
    # longest_edge). The released 65536 minimum would make every 64..160 px picture at least 64 tokens;
    # 64*64 keeps a small picture at 4 tokens.
    min_pixels: int = 64 * 64
    max_pixels: int = 256 * 256
    embedding_std: float = 0.3  # the frozen table's scale (the fixture writes N(0, 1) rows)
    vision_pos_embed_std: float = 0.1
    # Weight of the training-only loss on the merged vision tokens (each token's shape kind, colour and
    # x/y centre, from a linear head dropped after training); 0 trains on the answers alone. Without it
    # the vision output learns colour but not shape or position (4-layer runs A / B: 77.7 % vs 93.7 %
    # held-out on 300, docs/trained_model.md).
    vision_aux_weight: float = 1.0
    # optimisation
    steps: int = 2000
    batch_size: int = 16
    turns: int = 6  # questions per training picture (multi-turn chat): one vision pass, six answers
    learning_rate: float = 1e-3  # at 3e-3 "is the shape in the left half?" stayed at chance (docs/trained_model.md)
    vision_lr_scale: float = 1.0  # the vision tower's learning rate relative to learning_rate
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 1
    data_seed: int = shapes_task.TRAIN_SEED


DEFAULT_CONFIG = TrainConfig()


def with_overrides(cfg: TrainConfig, assignments: list[str]) -> TrainConfig:
    """``cfg`` with ``NAME=VALUE`` assignments applied, each value parsed as the field's type."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, Any] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set '{item}': expected NAME=VALUE with NAME one of {', '.join(sorted(fields))}")
        current = getattr(cfg, name)
        expected = {tuple: "comma-separated integers", int: "an integer", float: "a number"}[type(current)]
        try:
            if isinstance(current, tuple):
                changes[name] = tuple(int(v) for v in value.split(","))
            else:
                changes[name] = type(current)(value)
        except ValueError:
            raise ValueError(f"--set {name}: '{value}' is not {expected}") from None
    return dataclasses.replace(cfg, **changes)
