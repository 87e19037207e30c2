"""Shared pieces for the text-side tests: a tiny checkpoint, HF runs with DeepStack, and ORT decoder runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hf_patches import fixed_3d_text_rotary
from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

NUM_LAYERS = 4  # > D = 3, so every DeepStack block lands inside the stack


def text_test_config() -> dict:
    """Text: hidden 64, 4 layers, 4 heads / 2 KV heads, head_dim 32, mrope [6, 5, 5]; vision: depth 4, DeepStack [0, 1, 2]."""
    return tiny_config(num_hidden_layers=NUM_LAYERS)


def write_text_checkpoint(folder: Path, config_format: str = "4.57") -> Path:
    # The og builder loads the tokenizer from the checkpoint folder, so it needs real tokenizer files.
    return write_checkpoint(folder, text_test_config(), config_format=config_format, tokenizer=True)


@dataclass
class Step:
    """One decoder call: the wide inputs_embeds [B, S, (1+D)H], 3D position ids [3, B, S], image mask [B, S]."""

    embeds_BSW: np.ndarray
    position_ids_3BS: np.ndarray
    image_mask_BS: np.ndarray


def make_steps(hidden: int, deepstack: int, batch: int = 2, decode_steps: int = 3, seed: int = 0) -> list[Step]:
    """A prefill with an image (grid 1 x 2 x 3 = 6 tokens after 3 text tokens) then single-token decode steps.

    Image rows carry non-zero DeepStack columns; text rows carry zeros there, as embeddings.onnx writes them.
    Row b of the batch places its image one token later than row b - 1, so per-row masks differ.
    """
    gen = np.random.default_rng(seed)
    width = (1 + deepstack) * hidden
    seq = 12
    embeds = np.zeros((batch, seq, width), dtype=np.float32)
    embeds[..., :hidden] = gen.standard_normal((batch, seq, hidden))
    mask = np.zeros((batch, seq), dtype=bool)
    pos = np.zeros((3, batch, seq), dtype=np.int64)
    for b in range(batch):
        start = 3 + b
        mask[b, start : start + 6] = True
        embeds[b, start : start + 6, hidden:] = gen.standard_normal((6, width - hidden))
        t = np.arange(start)
        pos[:, b, :start] = t
        hh, ww = np.meshgrid(np.arange(2), np.arange(3), indexing="ij")
        pos[0, b, start : start + 6] = start
        pos[1, b, start : start + 6] = start + hh.ravel()
        pos[2, b, start : start + 6] = start + ww.ravel()
        rest = seq - start - 6
        nxt = start + 3  # max image position (start + 2) + 1
        pos[:, b, start + 6 :] = nxt + np.arange(rest)
    steps = [Step(embeds, pos, mask)]
    last = pos[:, :, -1:]
    for i in range(decode_steps):
        e = np.zeros((batch, 1, width), dtype=np.float32)
        e[..., :hidden] = gen.standard_normal((batch, 1, hidden))
        steps.append(Step(e, last + 1 + i, np.zeros((batch, 1), dtype=bool)))
    return steps


def hf_logits(model: torch.nn.Module, steps: list[Step], deepstack: int) -> list[np.ndarray]:
    """HF Qwen3-VL logits for each step: main columns as inputs_embeds, DeepStack via visual_pos_masks."""
    from transformers import DynamicCache

    lm = model.model.language_model
    hidden = lm.config.hidden_size
    cache = DynamicCache(config=lm.config)
    out: list[np.ndarray] = []
    total = 0
    with torch.no_grad(), fixed_3d_text_rotary():
        for step in steps:
            embeds = torch.from_numpy(step.embeds_BSW)
            batch, seq, _ = embeds.shape
            total += seq
            mask = torch.from_numpy(step.image_mask_BS)
            kwargs = {}
            if mask.any():
                kwargs["visual_pos_masks"] = mask
                kwargs["deepstack_visual_embeds"] = [embeds[mask][:, (k + 1) * hidden : (k + 2) * hidden] for k in range(deepstack)]
            result = lm(
                inputs_embeds=embeds[..., :hidden],
                position_ids=torch.from_numpy(step.position_ids_3BS),
                attention_mask=torch.ones(batch, total, dtype=torch.long),
                past_key_values=cache,
                use_cache=True,
                **kwargs,
            )
            out.append(model.lm_head(result.last_hidden_state).numpy())
    return out


def ort_logits(
    model_path: Path, steps: list[Step], num_layers: int, kv_heads: int, head_dim: int, io_dtype: type = np.float32
) -> list[np.ndarray]:
    """Run model.onnx step by step, feeding present.* back as past_key_values.*."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if io_dtype == np.float16:
        # og's fp16 decoder on the CPU EP (og's own build too) fails its first decode step in
        # onnxruntime 1.31 with "Shape mismatch attempting to re-use buffer" unless buffer reuse is off.
        options.enable_mem_reuse = False
    sess = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    batch = steps[0].embeds_BSW.shape[0]
    past = {
        f"past_key_values.{i}.{kind}": np.zeros((batch, kv_heads, 0, head_dim), dtype=io_dtype)
        for i in range(num_layers)
        for kind in ("key", "value")
    }
    out: list[np.ndarray] = []
    total = 0
    for step in steps:
        total += step.embeds_BSW.shape[1]
        feeds = {
            "inputs_embeds": step.embeds_BSW.astype(io_dtype),
            "position_ids": step.position_ids_3BS,
            "attention_mask": np.ones((batch, total), dtype=np.int64),
            **past,
        }
        names = [o.name for o in sess.get_outputs()]
        results = dict(zip(names, sess.run(names, feeds)))
        out.append(results["logits"].astype(np.float32))
        past = {name.replace("present.", "past_key_values."): value for name, value in results.items() if name.startswith("present.")}
    return out
