"""Loading Qwen3-VL MoE fused experts right: after HF has loaded the model, ``fix_ambiguous_experts`` reloads,
from the file, every tensor whose stored shape equals the parameter shape in a released layer and transposes it
itself, whatever transformers did with it (checkpoint/moe_layout.py says why a tensor alone is ambiguous).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..checkpoint.moe_layout import DOWN, GATE_UP, RELEASED, expert_key
from ..checkpoint.safetensors_index import read_checkpoint_tensors

log = logging.getLogger(__name__)


def fix_ambiguous_experts(model: Any, folder: Path, layouts: dict[int, str]) -> list[str]:
    """Put right, in the loaded HF model, the released-layout tensors transformers' shape rule cannot tell apart.

    Returns the names of the tensors reloaded from the file (none unless H == 2I or I == H). On a model
    whose parameters are on the meta device (the lazy reader's skeleton, moe_model.py) nothing is read:
    the names say which tensors the reader must turn itself.
    """
    import torch
    from safetensors import safe_open

    tensors = read_checkpoint_tensors(folder)
    layers = model.model.language_model.layers
    fixed = []
    for layer, layout in layouts.items():
        if layout != RELEASED or layer >= len(layers):  # og's num_hidden_layers option loads fewer layers
            continue
        experts = layers[layer].mlp.experts
        for which in (GATE_UP, DOWN):
            param = getattr(experts, which)
            info = tensors[expert_key(layer, which)]
            if info.shape != tuple(param.shape):
                continue  # transformers saw the shapes differ and transposed
            if param.device.type == "meta":
                fixed.append(info.name)
                continue
            with safe_open(str(info.file), framework="pt") as f:
                stored = f.get_tensor(info.name)
            with torch.no_grad():
                param.copy_(stored.transpose(1, 2).to(param.dtype))
            fixed.append(info.name)
    if fixed:
        log.info("reloaded %d expert tensors transformers could not orient from their shapes (%s, ...)", len(fixed), fixed[0])
    return fixed
