"""Phases that run Hugging Face transformers on the same checkpoint and inputs (the peer)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import Settings, benchmark_images, hf_vision_output_path, random_pixel_values, text_prompt_ids, timed

from builder_qwen3vl.ground.tokens import IMAGE_TOKEN_ID

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def _torch(settings: Settings):
    import torch

    torch.set_num_threads(settings.threads)
    return torch


def load_visual(settings: Settings, dtype: str):
    """HF ``Qwen3VLVisionModel`` (attn sdpa) with the checkpoint's model.visual.* weights."""
    torch = _torch(settings)
    from transformers import Qwen3VLConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    from builder_qwen3vl.checkpoint.reader import read_checkpoint
    from builder_qwen3vl.checkpoint.weights import load_prefix

    ckpt = read_checkpoint(settings.checkpoint)
    torch_dtype = getattr(torch, DTYPES[dtype])
    cfg = Qwen3VLConfig.from_dict(ckpt.raw_config)
    visual = Qwen3VLVisionModel._from_config(cfg.vision_config, attn_implementation="sdpa", dtype=torch_dtype)
    visual.load_state_dict({k: v.to(torch_dtype) for k, v in load_prefix(ckpt, "model.visual.").items()}, strict=True)
    return visual.eval()


def vision_hf(settings: Settings, dtype: str) -> dict[str, Any]:
    torch = _torch(settings)
    visual = load_visual(settings, dtype)
    patch_dim = visual.config.in_channels * visual.config.temporal_patch_size * visual.config.patch_size**2
    slow = dtype == "bf16"  # no bf16 units on this CPU: 4-5x slower than fp32
    results = {}
    for i, image in enumerate(benchmark_images(settings)):
        pixels = torch.from_numpy(random_pixel_values(tuple(image["grid_thw"]), patch_dim)).to(visual.dtype)
        grid = torch.tensor([image["grid_thw"]], dtype=torch.long)

        outputs = []

        def once() -> None:
            with torch.inference_mode():
                outputs[:] = [visual(pixels, grid_thw=grid)]

        # bf16 calls take tens of seconds each: no warm-up (one-time costs are small against them).
        warmup = 0 if slow else 1
        t = timed(once, settings.slow_repeats if slow else settings.repeats, warmup=warmup)
        t["patches"] = image["patches"]
        t["patches_per_s"] = image["patches"] / t["median_s"]
        results[image["name"]] = t
        if dtype == "fp32" and outputs:  # the reference for the vision variants' parity (measure_onnx.vision_variants)
            out = outputs[0]
            wide = torch.cat([out.pooler_output, *out.deepstack_features], dim=-1).float().numpy()
            np.save(hf_vision_output_path(settings, image["name"]), wide)
    return {"images": results, "attn_implementation": "sdpa", "dtype": dtype}


def load_lm(settings: Settings, dtype: str, attn: str):
    """HF's own class for the checkpoint: the dense Qwen3-VL or, for ``qwen3_vl_moe``, the MoE one."""
    torch = _torch(settings)
    import transformers

    moe = json.loads((Path(settings.checkpoint) / "config.json").read_text()).get("model_type") == "qwen3_vl_moe"
    model_class = transformers.Qwen3VLMoeForConditionalGeneration if moe else transformers.Qwen3VLForConditionalGeneration
    model = model_class.from_pretrained(
        settings.checkpoint, dtype=getattr(torch, DTYPES[dtype]), attn_implementation=attn
    )
    return model.eval()


def image_processor(settings: Settings):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    cfg = json.loads((Path(settings.checkpoint) / "preprocessor_config.json").read_text())
    keys = ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    return Qwen2VLImageProcessorPil(**{k: cfg[k] for k in keys if k in cfg})


def ttft_hf(settings: Settings, dtype: str = "fp32", images: int | None = None) -> dict[str, Any]:
    """HF image processor + generate(max_new_tokens=1), sdpa, on og's input_ids (same grid); the first
    ``images`` benchmark images (all by default)."""
    torch = _torch(settings)
    from PIL import Image

    model = load_lm(settings, dtype, "sdpa")
    proc = image_processor(settings)
    results: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    for i, image in enumerate(benchmark_images(settings)[:images]):
        saved = np.load(Path(settings.work) / f"ttft_inputs_{image['name']}.npz")
        input_ids = torch.from_numpy(saved["input_ids"])
        first = []

        def once() -> None:
            with Image.open(image["path"]) as img:
                feats = proc(img.convert("RGB"), return_tensors="pt")
            if feats["image_grid_thw"].tolist() != [image["grid_thw"]]:
                raise RuntimeError(f"HF grid {feats['image_grid_thw'].tolist()} != {image['grid_thw']}")
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    # transformers >= 5 computes multimodal M-RoPE only when mm_token_type_ids is given
                    mm_token_type_ids=(input_ids == IMAGE_TOKEN_ID).to(torch.int32),
                    pixel_values=feats["pixel_values"], image_grid_thw=feats["image_grid_thw"],
                    max_new_tokens=1, do_sample=False,
                )
            first.append(int(out[0, -1]))

        big = i > 0
        t = timed(once, settings.slow_repeats if big else settings.repeats, warmup=0 if big else 1)
        t.update(prompt_tokens=int(input_ids.shape[-1]), first_token=first[-1])
        results[image["name"]] = t
    return results


def decode_hf(settings: Settings, dtype: str) -> dict[str, Any]:
    """HF eager: text-only prompt of ``ctx`` random tokens, greedy; per-step times from a logits hook."""
    torch = _torch(settings)
    from transformers import LogitsProcessor, LogitsProcessorList

    class Stamp(LogitsProcessor):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    model = load_lm(settings, dtype, "eager")
    contexts = [c for c in settings.contexts if dtype == "fp32" or c <= 256 or settings.hf_bf16_2048]
    results: dict[str, Any] = {"dtype": dtype, "attn_implementation": "eager",
                               "skipped_contexts": [c for c in settings.contexts if c not in contexts]}
    steps = max(4, settings.decode_steps // (2 if dtype == "fp32" else 4))
    with torch.inference_mode():  # warm-up: a short generate
        warm = torch.from_numpy(text_prompt_ids(16, seed=9))
        model.generate(input_ids=warm, mm_token_type_ids=torch.zeros_like(warm, dtype=torch.int32), max_new_tokens=3,
                       min_new_tokens=3, do_sample=False)
    for ctx in contexts:
        ids = torch.from_numpy(text_prompt_ids(ctx))
        stamp = Stamp()
        start = time.perf_counter()
        with torch.inference_mode():
            # text only: mm_token_type_ids all 0 (transformers >= 5 warns and falls back to 1-D positions without it)
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=torch.zeros_like(ids, dtype=torch.int32),
                           max_new_tokens=steps + 1,
                           min_new_tokens=steps + 1, do_sample=False, logits_processor=LogitsProcessorList([stamp]))
        deltas = np.diff(stamp.times).tolist()
        med = statistics.median(deltas)
        results[str(ctx)] = {"prefill_s": stamp.times[0] - start, "step_median_s": med, "tokens_per_s": 1.0 / med, "steps": len(deltas)}
    return results
