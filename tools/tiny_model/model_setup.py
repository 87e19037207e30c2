"""The tiny model before its first step: its config, the checkpoint folder training starts from, and
the initial weights as training uses them.

The model is HF's own ``Qwen3VLForConditionalGeneration`` with DeepStack, the real tokenizer and
chat template, and the real 151,936-row tied embedding table. The table is frozen at values from a
stable generator (builder_qwen3vl.shipped.table): it is most of the parameters, training it would cost
more than the rest of the model, and a fixed random table is still a usable input and output
vocabulary (the decoder learns to point its last hidden state at the answer's row).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder_qwen3vl.shipped.table import embedding_table
from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

from .train_config import TrainConfig


def model_config(cfg: TrainConfig) -> dict[str, Any]:
    return tiny_config(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.intermediate_size,
        vision_depth=cfg.vision_depth,
        vision_hidden_size=cfg.vision_hidden_size,
        vision_heads=cfg.vision_heads,
        vision_intermediate_size=cfg.vision_intermediate_size,
        deepstack_visual_indexes=cfg.deepstack_visual_indexes,
        num_position_embeddings=cfg.num_position_embeddings,
    )


def write_preprocessor_config(folder: Path, cfg: TrainConfig) -> None:
    """The recipe's processor limits in the checkpoint's preprocessor_config.json."""
    path = folder / "preprocessor_config.json"
    pre = json.loads(path.read_text())
    pre["size"] = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    path.write_text(json.dumps(pre, indent=2))


def write_initial_checkpoint(folder: Path, cfg: TrainConfig) -> Path:
    """The checkpoint folder a training run starts from: random weights (testing.random_init) and the real tokenizer."""
    write_checkpoint(folder, model_config(cfg), seed=cfg.seed)
    write_preprocessor_config(folder, cfg)
    return folder


def load_initial_model(folder: Path, cfg: TrainConfig) -> Any:
    """The model of ``folder`` (from write_initial_checkpoint) as the recipe starts it, in training mode."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    table = model.get_input_embeddings().weight
    with torch.no_grad():
        # Frozen tied table, so its scale fixes the logit scale: with rows ~N(0, s^2) and the final norm at 1,
        # a random row scores ~N(0, (s*sqrt(H))^2) and a perfectly aligned target s*H. s = 1 (the fixture's)
        # starts at loss ~70; s = 1/sqrt(H) cannot beat 151,936 random rows until the norm weight grows
        # (loss stalled at 2.3); s = 0.3 starts at ~18 and leaves a margin of ~20 nats once aligned.
        # From the stable generator, so the shipped weights can leave the table out (shipped/assembly.py).
        table.copy_(torch.from_numpy(embedding_table(*table.shape, cfg.embedding_std, cfg.seed)))
        # The fixture's N(0, 1) position table drowns the patch content (~0.5) at the start; ViTs start near 0.02.
        model.model.visual.pos_embed.weight.mul_(cfg.vision_pos_embed_std)
    table.requires_grad_(False)
    model.train()
    return model


def count_parameters(model: Any) -> dict[str, int]:
    table = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "embedding_table": table.numel(), "besides_embedding": total - table.numel(),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
