"""Write Qwen3-VL checkpoint folders with random weights, offline.

Tiny configs serve the tests; the real 2B/4B/8B shapes (the released config.json files in data/reference)
serve the benchmarks. Tensor names and shapes come from HF's own model class built on the meta device,
so the folder is exactly what ``Qwen3VLForConditionalGeneration.from_pretrained`` expects.
Tensors are generated one at a time and written shard by shard: peak memory is about one
shard, not the whole model.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import logging
from pathlib import Path
from typing import Any

from .random_init import random_tensor

log = logging.getLogger(__name__)

REFERENCE_NAMES = ("2b", "4b", "8b", "32b")
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def reference_json(filename: str) -> dict[str, Any]:
    """A released Qwen3-VL file (transformers 4.57 format) kept as package data under data/reference."""
    path = importlib.resources.files(__package__) / "data" / "reference" / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected one of the reference files shipped with builder_qwen3vl.testing")
    return json.loads(path.read_text())


def reference_config(name: str) -> dict[str, Any]:
    """The released dense checkpoint's config.json (transformers 4.57 format): one of ``REFERENCE_NAMES``."""
    if name not in REFERENCE_NAMES:
        raise ValueError(f"reference config '{name}': expected one of {', '.join(REFERENCE_NAMES)}")
    return reference_json(f"qwen3-vl-{name}-instruct.config.json")


def tiny_config(
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 32,
    mrope_section: tuple[int, int, int] = (6, 5, 5),
    intermediate_size: int = 128,
    vocab_size: int = 151936,
    vision_depth: int = 4,
    vision_hidden_size: int = 64,
    vision_heads: int = 4,
    vision_intermediate_size: int = 128,
    deepstack_visual_indexes: tuple[int, ...] = (0, 1, 2),
    num_position_embeddings: int = 64,
    patch_size: int = 16,
    spatial_merge_size: int = 2,
    tie_word_embeddings: bool = True,
) -> dict[str, Any]:
    """A small Qwen3-VL config.json in the 4.57 format of the released checkpoints.

    ``spatial_merge_size`` 1 is transformers' own Qwen3-VL test config (one token per patch).

    The default vocabulary is the real one (151,936 rows) so the real tokenizer and its
    special-token ids work; the table costs 39 MB in fp32 at hidden 64.
    """
    cfg = reference_config("2b")
    cfg["tie_word_embeddings"] = tie_word_embeddings
    cfg["text_config"].update(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings,
        dtype="float32",
    )
    cfg["text_config"]["rope_scaling"]["mrope_section"] = list(mrope_section)
    cfg["vision_config"].update(
        depth=vision_depth,
        hidden_size=vision_hidden_size,
        num_heads=vision_heads,
        intermediate_size=vision_intermediate_size,
        out_hidden_size=hidden_size,
        deepstack_visual_indexes=list(deepstack_visual_indexes),
        num_position_embeddings=num_position_embeddings,
        patch_size=patch_size,
        spatial_merge_size=spatial_merge_size,
    )
    if vocab_size <= cfg["image_token_id"]:  # a small test vocabulary: keep the vision token ids inside it
        first = vocab_size - 4
        cfg.update(image_token_id=first, video_token_id=first + 1, vision_start_token_id=first + 2,
                   vision_end_token_id=first + 3)
    return cfg


def to_5x_format(config: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a 4.57-format config the way transformers 5.x saves it (rope_parameters)."""
    cfg = copy.deepcopy(config)
    text = cfg["text_config"]
    rope = dict(text.pop("rope_scaling", None) or {})
    rope["rope_theta"] = text.pop("rope_theta", rope.get("rope_theta", 5000000))
    text["rope_parameters"] = rope
    cfg["vision_config"]["model_type"] = "qwen3_vl_vision"
    cfg["transformers_version"] = "5.0.0"
    return cfg


def _meta_state_shapes(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the tensors HF saves for this config, in its state_dict order."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    hf_cfg = Qwen3VLConfig.from_dict(config)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(hf_cfg)
    tied = bool(config.get("tie_word_embeddings", config["text_config"].get("tie_word_embeddings", False)))
    return [
        (name, tuple(t.shape))
        for name, t in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    ]


def _shard_plan(shapes: list[tuple[str, tuple[int, ...]]], shards: int, itemsize: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    total = sum(_numel(s) for _, s in shapes) * itemsize
    budget = total / shards
    plan: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0.0
    for name, shape in shapes:
        size = _numel(shape) * itemsize
        if plan[-1] and used + size > budget and len(plan) < shards:
            plan.append([])
            used = 0.0
        plan[-1].append((name, shape))
        used += size
    return plan


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_checkpoint(
    folder: str | Path,
    config: dict[str, Any],
    *,
    dtype: str = "fp32",
    config_format: str = "4.57",
    shards: int = 1,
    seed: int = 0,
    tokenizer: bool = True,
    video_config: dict[str, Any] | bool = True,
) -> Path:
    """Write a complete checkpoint folder (config, weights, tokenizer, processor and generation configs).

    The image and video processor configs are the released ones with the vision tower's patch, temporal patch
    and merge sizes. ``video_config``: True writes the released video_preprocessor_config.json, False none
    (HF then reads preprocessor_config.json for video), a dict the released one with those keys changed (None
    removes a key).
    """
    import torch
    from safetensors.torch import save_file

    if dtype not in _DTYPES:
        raise ValueError(f"dtype '{dtype}': expected one of {', '.join(_DTYPES)}")
    if config_format not in ("4.57", "5.x"):
        raise ValueError(f"config_format '{config_format}': expected '4.57' or '5.x'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch_dtype = getattr(torch, _DTYPES[dtype])

    cfg = copy.deepcopy(config)
    cfg["text_config"]["dtype"] = _DTYPES[dtype]
    saved = to_5x_format(cfg) if config_format == "5.x" else cfg
    (folder / "config.json").write_text(json.dumps(saved, indent=2))

    shapes = _meta_state_shapes(cfg)
    plan = _shard_plan(shapes, max(1, shards), torch.empty((), dtype=torch_dtype).element_size())
    names = [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))] if len(plan) > 1 else ["model.safetensors"]
    weight_map: dict[str, str] = {}
    total_bytes = 0
    for shard_name, entries in zip(names, plan):
        tensors = {name: random_tensor(name, shape, seed, torch_dtype) for name, shape in entries}
        total_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(folder / shard_name), metadata={"format": "pt"})
        weight_map.update({name: shard_name for name in tensors})
        log.info("wrote %s (%d tensors)", shard_name, len(tensors))
        del tensors
    if len(plan) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    vision = cfg["vision_config"]
    sizes = {"patch_size": vision.get("patch_size", 16), "temporal_patch_size": vision.get("temporal_patch_size", 2),
             "merge_size": vision.get("spatial_merge_size", 2)}
    image = {**reference_json("qwen3-vl-preprocessor_config.json"), **sizes}
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    if video_config is not False:
        changes = video_config if isinstance(video_config, dict) else {}
        video = {**reference_json("qwen3-vl-video_preprocessor_config.json"), **sizes, **changes}
        video = {k: v for k, v in video.items() if v is not None}
        (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(reference_json("qwen3-vl-instruct.generation_config.json"), indent=2))
    if tokenizer:
        from ..shipped.tokenizer import write_tokenizer

        write_tokenizer(folder)
    return folder
