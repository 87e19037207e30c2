"""HF's own vision tower, built from the checkpoint's config and ``model.visual.*`` weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..checkpoint.weights import load_prefix

if TYPE_CHECKING:
    from ..checkpoint.reader import Checkpoint

VISION_PREFIX = "model.visual."


def load_hf_visual(ckpt: Checkpoint):
    """HF's own ``Qwen3VLVisionModel`` with the checkpoint's ``model.visual.*`` weights, in fp32."""
    import torch
    from transformers import Qwen3VLConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights

    hf_cfg = Qwen3VLConfig.from_dict(ckpt.raw_config)
    # No random init, and the loaded tensors are adopted (assign=True) instead of copied: the tower then
    # exists once in fp32, not twice (1.6 GB less at 2B). The never-written empty parameters cost no memory.
    with no_init_weights():
        visual = Qwen3VLVisionModel._from_config(hf_cfg.vision_config, attn_implementation="eager", dtype=torch.float32)
    state = {k: v.to(torch.float32) for k, v in load_prefix(ckpt, VISION_PREFIX).items()}
    visual.load_state_dict(state, strict=True, assign=True)
    return visual.eval()
