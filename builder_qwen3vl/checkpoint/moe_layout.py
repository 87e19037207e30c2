"""Qwen3-VL MoE fused experts: which layout a checkpoint stores them in.

Each sparse layer stores two fused tensors, in one of two layouts:

================  ===============================  ==========================
layout            ``mlp.experts.gate_up_proj``     ``mlp.experts.down_proj``
================  ===============================  ==========================
"released"        [E, H, 2I]                       [E, I, H]
"transformers5"   [E, 2I, H] (HF's parameter)      [E, H, I] (HF's parameter)
================  ===============================  ==========================

The published Qwen3-VL MoE checkpoints (and transformers 4.57's ``save_pretrained``) use the first, and
transformers 5 saves its parameters' own shapes. transformers 5 loads both through its
``conversion_mapping`` entry for ``qwen3_vl_moe``: ``Transpose(1, 2, check_dims=True)`` on each tensor,
which transposes *iff the stored shape differs from the parameter's* (``core_model_loading.Transpose``).
A tensor alone is therefore ambiguous when it is square in its last two axes' sense: ``gate_up_proj``
when H == 2I, ``down_proj`` when I == H. transformers then keeps the stored orientation and, for a
released checkpoint, silently loads the wrong weights.

The pair is never ambiguous: both tensors fit both layouts only if H == 2I and I == H, i.e. I == 0. So
the layout of each layer is decided from the two shapes in the safetensors headers together, against
the config's E, H and I (``expert_layouts``); a pair that fits neither layout is refused. The decoder
puts right what transformers loads wrong (decoder/moe_experts.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..ground.errors import InputError
from .safetensors_index import TensorInfo, read_checkpoint_tensors

log = logging.getLogger(__name__)

RELEASED, TRANSFORMERS5 = "released", "transformers5"
GATE_UP, DOWN = "gate_up_proj", "down_proj"


def expert_key(layer: int, which: str) -> str:
    return f"model.language_model.layers.{layer}.mlp.experts.{which}"


def layout_shapes(num_experts: int, hidden: int, moe_intermediate: int) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Stored shapes of (gate_up_proj, down_proj) in each layout."""
    e, h, i = num_experts, hidden, moe_intermediate
    return {
        RELEASED: {GATE_UP: (e, h, 2 * i), DOWN: (e, i, h)},
        TRANSFORMERS5: {GATE_UP: (e, 2 * i, h), DOWN: (e, h, i)},
    }


def sparse_layers(text_config: Any) -> list[int]:
    """Decoder layers with a sparse MoE block, by HF's rule (``Qwen3VLMoeTextDecoderLayer.__init__``)."""
    only = set(getattr(text_config, "mlp_only_layers", None) or [])
    step = text_config.decoder_sparse_step
    return [
        i for i in range(text_config.num_hidden_layers)
        if i not in only and text_config.num_experts > 0 and (i + 1) % step == 0
    ]


def expert_layouts(
    tensors: dict[str, TensorInfo], layers: list[int], num_experts: int, hidden: int, moe_intermediate: int
) -> dict[int, str]:
    """The layout of each sparse layer's experts, from the stored shapes of its two fused tensors."""
    shapes = layout_shapes(num_experts, hidden, moe_intermediate)
    expected = "; ".join(f"{name}: gate_up_proj {list(s[GATE_UP])}, down_proj {list(s[DOWN])}" for name, s in shapes.items())
    out: dict[int, str] = {}
    for layer in layers:
        stored = {}
        for which in (GATE_UP, DOWN):
            info = tensors.get(expert_key(layer, which))
            if info is None:
                raise InputError(f"checkpoint has no tensor '{expert_key(layer, which)}' (layer {layer} is a sparse MoE layer)")
            stored[which] = info.shape
        fits = [name for name, s in shapes.items() if stored[GATE_UP] == s[GATE_UP] and stored[DOWN] == s[DOWN]]
        if len(fits) != 1:  # 2 would need I == 0
            raise InputError(
                f"layer {layer} experts: gate_up_proj {list(stored[GATE_UP])}, down_proj {list(stored[DOWN])} fit no known "
                f"layout for num_experts={num_experts}, hidden_size={hidden}, moe_intermediate_size={moe_intermediate} "
                f"(expected {expected})"
            )
        out[layer] = fits[0]
    return out


def read_expert_layouts(folder: Path, text_config: Any) -> dict[int, str]:
    layers = sparse_layers(text_config)
    layouts = expert_layouts(
        read_checkpoint_tensors(folder), layers, text_config.num_experts, text_config.hidden_size,
        text_config.moe_intermediate_size,
    )
    found = sorted(set(layouts.values()))
    log.info("MoE experts of %d sparse layers stored in the %s layout", len(layers), " and ".join(found) or "(none)")
    return layouts
