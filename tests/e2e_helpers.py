"""Shared pieces for the end-to-end tests: structured test images, the HF-side pipeline
(tokenizer + PIL image processor + Qwen3VLForConditionalGeneration) and the og-side pipeline
(og processor + og.Generator) run on the same chat-templated prompt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from builder_qwen3vl.runtime.og_run import greedy
from builder_qwen3vl.ground.tokens import IMAGE_TOKEN_ID

MERGE_SIZE = 2


# ---------------------------------------------------------------- images

def structured_image(width: int, height: int, seed: int) -> Image.Image:
    """An RGB image with a diagonal colour gradient, filled shapes and lines (seeded), so patches differ."""
    rng = np.random.default_rng(seed)
    y_HW, x_HW = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    tilt = rng.uniform(-1, 1, size=(3, 2))
    rgb_HW3 = np.stack(
        [base[c] + 120 * (tilt[c, 0] * x_HW / width + tilt[c, 1] * y_HW / height) for c in range(3)], axis=-1
    )
    img = Image.fromarray(np.clip(rgb_HW3, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        draw.line((x0, y1, x1, y0), fill=tuple(255 - c for c in colour), width=max(1, min(width, height) // 40))
    return img


def save_images(folder: Path, images: list[Image.Image], stem: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{stem}_{i}.png"
        img.save(path)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------- HF side

def load_hf_tokenizer(ckpt: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt)


def load_hf_image_processor(ckpt: Path):
    """HF's PIL image processor (no torchvision needed) with the checkpoint's preprocessor_config.json."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pre = json.loads((ckpt / "preprocessor_config.json").read_text())
    keys = ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    return Qwen2VLImageProcessorPil(**{k: pre[k] for k in keys})


def chat_prompt(hf_tokenizer, num_images: int, text: str, system: str | None = None) -> str:
    """The chat-templated prompt text (HF's template from the checkpoint), one image tag per image."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    messages.append({"role": "user", "content": content})
    return hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class HfInputs:
    """What HF's Qwen3VLProcessor would return: input_ids [1, S], pixel_values [P, 1536], image_grid_thw [N, 3]."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        kwargs = {
            "input_ids": self.input_ids,
            "attention_mask": torch.ones_like(self.input_ids),
            # HF 5.x needs the modality of every token to build the 3D (M-RoPE) positions.
            "mm_token_type_ids": (self.input_ids == IMAGE_TOKEN_ID).to(torch.int32),
        }
        if self.pixel_values is not None:
            kwargs.update(pixel_values=self.pixel_values, image_grid_thw=self.image_grid_thw)
        return kwargs


def expand_image_pads(ids: list[int], grid_thw: np.ndarray, merge_size: int = MERGE_SIZE) -> list[int]:
    """Replace the k-th <|image_pad|> by t*h*w / merge^2 copies (what HF's processor does in text)."""
    counts = [int(np.prod(g)) // merge_size**2 for g in grid_thw]
    out: list[int] = []
    k = 0
    for tok in ids:
        if tok == IMAGE_TOKEN_ID:
            if k >= len(counts):
                raise ValueError(f"prompt has more <|image_pad|> tokens than the {len(counts)} images given")
            out.extend([IMAGE_TOKEN_ID] * counts[k])
            k += 1
        else:
            out.append(tok)
    if k != len(counts):
        raise ValueError(f"prompt has {k} <|image_pad|> tokens, expected {len(counts)} (one per image)")
    return out


def hf_inputs(hf_tokenizer, image_processor, prompt: str, images: list[Image.Image]) -> HfInputs:
    ids = hf_tokenizer(prompt, add_special_tokens=False).input_ids
    if not images:
        return HfInputs(torch.tensor([ids], dtype=torch.long), None, None)
    proc = image_processor(images=images, return_tensors="pt")
    grid = proc["image_grid_thw"]
    ids = expand_image_pads(ids, grid.numpy(), getattr(image_processor, "merge_size", MERGE_SIZE))
    return HfInputs(torch.tensor([ids], dtype=torch.long), proc["pixel_values"].to(torch.float32), grid)


def hf_prefill_logits(model: torch.nn.Module, inputs: HfInputs) -> np.ndarray:
    """HF logits [1, S, V] for every prompt position."""
    with torch.no_grad():
        return model(**inputs.model_kwargs()).logits.float().numpy()


@dataclass
class HfGeneration:
    tokens: list[int]
    step_logits: np.ndarray  # [steps, V]: raw logits that chose each generated token
    min_margin: float  # smallest top-1 minus top-2 logit over the generated steps (near-tie detector)


def hf_generate(model: torch.nn.Module, inputs: HfInputs, max_new_tokens: int) -> HfGeneration:
    with torch.no_grad():
        out = model.generate(
            **inputs.model_kwargs(), do_sample=False, max_new_tokens=max_new_tokens,
            output_logits=True, return_dict_in_generate=True,
        )
    prompt_len = inputs.input_ids.shape[1]
    step_logits = torch.cat([step.float() for step in out.logits]).numpy()
    top2 = np.sort(step_logits, axis=-1)[:, -2:]
    return HfGeneration(out.sequences[0, prompt_len:].tolist(), step_logits, float((top2[:, 1] - top2[:, 0]).min()))


# ---------------------------------------------------------------- og side

@dataclass
class OgGeneration:
    tokens: list[int]
    prefill_logits: np.ndarray  # [1, S, V]: generator.get_output("logits") after the first step
    step_logits: np.ndarray  # [steps, V]: the logits row each generated token was chosen from


def og_process(model, prompt: str, image_paths: list[str]):
    """og's own multimodal processor on the same prompt text: a NamedTensors of input_ids, pixel_values, ..."""
    import onnxruntime_genai as og

    processor = model.create_multimodal_processor()
    return processor(prompt, images=og.Images.open(*image_paths) if image_paths else None)


def og_numpy(inputs) -> dict[str, np.ndarray]:
    return {name: inputs[name].as_numpy() for name in inputs.keys()}


def og_generate(model, inputs, max_new_tokens: int) -> OgGeneration:
    """Greedy through og.Generator (builder_qwen3vl.runtime.og_run.greedy), keeping every step's logits."""
    steps = list(greedy(model, inputs, max_new_tokens, keep_logits=True))
    prefill = steps[0][1]
    # After each generate_next_token, "logits" holds the step that chose the token just produced.
    return OgGeneration([t for t, _ in steps], prefill, np.stack([logits[0, -1] for _, logits in steps]))
