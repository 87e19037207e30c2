"""Write Qwen3-VL MoE (``Qwen3VLMoeForConditionalGeneration``) checkpoint folders with random weights, offline.

The sibling of checkpoints.py for the MoE family (Qwen3-VL-30B-A3B / 235B-A22B). The config is the dense
tiny config turned into a ``qwen3_vl_moe`` one with the MoE keys of the released 30B-A3B config.json;
tensor names and shapes come from HF's own MoE class built on the meta device.

The fused expert tensors are written in either layout found in the wild (``EXPERT_LAYOUTS``):

- ``"released"``: as the published Qwen3-VL MoE checkpoints (and transformers 4.57) store them,
  ``mlp.experts.gate_up_proj [E, H, 2I]`` and ``mlp.experts.down_proj [E, I, H]``;
- ``"transformers5"``: as transformers 5 saves them (its parameters' own shapes),
  ``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]``.

Both layouts hold the same model: the expert weights are drawn once, in transformers 5's orientation
(gate rows then up rows of ``gate_up_proj``), and the released layout writes their transposes.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from .checkpoints import _DTYPES, reference_json, tiny_config, to_5x_format
from .random_init import random_tensor
from ..ground.vocab import QWEN3_VL_MOE_ARCHITECTURE, QWEN3_VL_MOE_MODEL_TYPE

log = logging.getLogger(__name__)

EXPERT_LAYOUTS = ("released", "transformers5")

# The MoE keys of the released Qwen/Qwen3-VL-30B-A3B-Instruct config.json (transformers 4.57 format): its
# text_config has these on top of the dense keys, with model_type "qwen3_vl_moe_text"; the top level has
# model_type "qwen3_vl_moe" and architectures [Qwen3VLMoeForConditionalGeneration]; vision_config's model_type
# is "qwen3_vl_moe". (Released sizes: hidden 2048, 48 layers, 32 heads / 4 KV heads, untied tables.)
RELEASED_30B_A3B_MOE_KEYS: dict[str, Any] = {
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "moe_intermediate_size": 768,
    "norm_topk_prob": True,
    "num_experts": 128,
    "num_experts_per_tok": 8,
}


MOE_REFERENCE_NAMES = ("30b-a3b", "235b-a22b")

# What the published Qwen/Qwen3-VL-235B-A22B-Instruct config.json changes from the 30B-A3B one (every other key,
# the 128 experts / top 8, 4 KV heads, head_dim 128, the vision tower and the token ids included, is the same).
QWEN3_VL_235B_A22B_CHANGES: dict[str, dict[str, Any]] = {
    "text_config": {"hidden_size": 4096, "intermediate_size": 12288, "moe_intermediate_size": 1536,
                    "num_attention_heads": 64, "num_hidden_layers": 94},
    "vision_config": {"out_hidden_size": 4096},
}


def reference_moe_config(name: str) -> dict[str, Any]:
    """The released MoE checkpoint's config.json (transformers 4.57 format): '30b-a3b' as stored under data/reference,
    '235b-a22b' as that file with ``QWEN3_VL_235B_A22B_CHANGES``."""
    if name not in MOE_REFERENCE_NAMES:
        raise ValueError(f"reference MoE config '{name}': expected one of {', '.join(MOE_REFERENCE_NAMES)}")
    cfg = reference_json("qwen3-vl-30b-a3b-instruct.config.json")
    if name == "235b-a22b":
        for section, changes in QWEN3_VL_235B_A22B_CHANGES.items():
            cfg[section].update(copy.deepcopy(changes))
    return cfg


def tiny_moe_config(
    *,
    num_experts: int = 8,
    num_experts_per_tok: int = 2,
    moe_intermediate_size: int = 32,
    decoder_sparse_step: int = 1,
    mlp_only_layers: tuple[int, ...] = (),
    norm_topk_prob: bool = True,
    **dense: Any,
) -> dict[str, Any]:
    """A small Qwen3-VL MoE config.json (4.57 format): ``tiny_config(**dense)`` made MoE.

    ``intermediate_size`` (a ``tiny_config`` argument) is the width of the dense MLP layers (those in
    ``mlp_only_layers`` or off the ``decoder_sparse_step``), ``moe_intermediate_size`` each expert's.
    """
    cfg = tiny_config(**dense)
    cfg["architectures"] = [QWEN3_VL_MOE_ARCHITECTURE]
    cfg["model_type"] = QWEN3_VL_MOE_MODEL_TYPE
    cfg["vision_config"]["model_type"] = QWEN3_VL_MOE_MODEL_TYPE
    text = cfg["text_config"]
    text["model_type"] = "qwen3_vl_moe_text"
    text.update(copy.deepcopy(RELEASED_30B_A3B_MOE_KEYS))
    text.update(
        num_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok,
        moe_intermediate_size=moe_intermediate_size,
        decoder_sparse_step=decoder_sparse_step,
        mlp_only_layers=list(mlp_only_layers),
        norm_topk_prob=norm_topk_prob,
    )
    return cfg


def to_5x_moe_format(config: dict[str, Any]) -> dict[str, Any]:
    """A 4.57-format MoE config as transformers 5.x saves it (rope_parameters, num_local_experts)."""
    cfg = to_5x_format(config)
    cfg["vision_config"]["model_type"] = "qwen3_vl_moe_vision"
    text = cfg["text_config"]
    text["num_local_experts"] = text.pop("num_experts")
    return cfg


def sparse_layers(text_config: dict[str, Any]) -> list[int]:
    """Decoder layers with a sparse MoE block, by HF's rule (Qwen3VLMoeTextDecoderLayer)."""
    num_experts = text_config.get("num_experts", text_config.get("num_local_experts", 0))
    step = text_config.get("decoder_sparse_step", 1)
    only = set(text_config.get("mlp_only_layers") or [])
    return [i for i in range(text_config["num_hidden_layers"]) if i not in only and num_experts > 0 and (i + 1) % step == 0]


def _meta_state_shapes(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the tensors transformers 5 saves for this config, in its state_dict order."""
    import torch
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    with torch.device("meta"):
        model = Qwen3VLMoeForConditionalGeneration(Qwen3VLMoeConfig.from_dict(config))
    tied = bool(config.get("tie_word_embeddings", config["text_config"].get("tie_word_embeddings", False)))
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items() if not (tied and name == "lm_head.weight")]


def moe_tensors(config: dict[str, Any], expert_layout: str = "released", seed: int = 0, dtype: str = "fp32") -> dict[str, Any]:
    """Every tensor of the checkpoint, the fused experts in ``expert_layout``.

    Experts are drawn as transformers 5 holds them, N(0, 1/fan_in) with fan_in = H for ``gate_up_proj``
    ([E, 2I, H]) and I for ``down_proj`` ([E, H, I]), so activations stay O(1); "released" stores their
    transposes over the last two axes. Everything else is ``random_tensor`` like the dense writer.
    """
    import torch

    if expert_layout not in EXPERT_LAYOUTS:
        raise ValueError(f"expert layout '{expert_layout}': expected one of {', '.join(EXPERT_LAYOUTS)}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype '{dtype}': expected one of {', '.join(_DTYPES)}")
    torch_dtype = getattr(torch, _DTYPES[dtype])
    return {name: moe_tensor(name, shape, expert_layout, seed, torch_dtype) for name, shape in _meta_state_shapes(config)}


def moe_tensor(name: str, shape: tuple[int, ...], expert_layout: str, seed: int, torch_dtype: Any) -> Any:
    """One tensor of ``moe_tensors`` (the benchmarks write real-size checkpoints a shard at a time with it)."""
    import torch

    if not name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
        return random_tensor(name, shape, seed, torch_dtype)
    # random_tensor's fan_in is the product of all but the first axis: draw one expert matrix at a time
    # (cast one at a time too: a 30B-A3B layer's experts in float32 are 2.4 GB).
    experts = torch.stack([random_tensor(f"{name}.{e}", shape[1:], seed, torch.float32).to(torch_dtype)
                           for e in range(shape[0])])
    return (experts.transpose(1, 2) if expert_layout == "released" else experts).contiguous()


def write_moe_checkpoint(
    folder: str | Path,
    config: dict[str, Any],
    *,
    expert_layout: str = "released",
    dtype: str = "fp32",
    config_format: str = "4.57",
    seed: int = 0,
    tokenizer: bool = True,
) -> Path:
    """Write a complete MoE checkpoint folder (config, one weights file, tokenizer, processor and generation configs).

    The same ``config`` and ``seed`` give the same model whatever ``expert_layout`` and ``config_format``.
    """
    from safetensors.torch import save_file

    if config_format not in ("4.57", "5.x"):
        raise ValueError(f"config_format '{config_format}': expected '4.57' or '5.x'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(config)
    cfg["text_config"]["dtype"] = _DTYPES[dtype]
    saved = to_5x_moe_format(cfg) if config_format == "5.x" else cfg
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    tensors = moe_tensors(cfg, expert_layout, seed, dtype)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    log.info("wrote %s (%d tensors, experts in the %s layout)", folder / "model.safetensors", len(tensors), expert_layout)

    vision = cfg["vision_config"]
    sizes = {"patch_size": vision.get("patch_size", 16), "temporal_patch_size": vision.get("temporal_patch_size", 2),
             "merge_size": vision.get("spatial_merge_size", 2)}
    (folder / "preprocessor_config.json").write_text(json.dumps({**reference_json("qwen3-vl-preprocessor_config.json"), **sizes}, indent=2))
    video = {**reference_json("qwen3-vl-video_preprocessor_config.json"), **sizes}
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(reference_json("qwen3-vl-instruct.generation_config.json"), indent=2))
    if tokenizer:
        from ..shipped.tokenizer import write_tokenizer

        write_tokenizer(folder)
    return folder
