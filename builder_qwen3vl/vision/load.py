"""HF's own vision tower, built from the checkpoint's config and ``model.visual.*`` weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..checkpoint.weights import load_prefix, load_tensors

if TYPE_CHECKING:
    import torch

    from ..checkpoint.reader import Checkpoint

VISION_PREFIX = "model.visual."


def visual_skeleton(ckpt: Checkpoint):
    """HF's own ``Qwen3VLVisionModel`` for the checkpoint's config, in fp32, its parameters allocated but never
    written: no random init, and untouched pages cost no memory. The export reads the real values one at a
    time (``checkpoint_weights``)."""
    import torch
    from transformers import Qwen3VLConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights

    hf_cfg = Qwen3VLConfig.from_dict(ckpt.raw_config)
    with no_init_weights():
        visual = Qwen3VLVisionModel._from_config(hf_cfg.vision_config, attn_implementation="eager", dtype=torch.float32)
    return visual.eval()


def checkpoint_weights(ckpt: Checkpoint, visual) -> Callable[[str], torch.Tensor]:
    """``name -> tensor`` for each of ``visual``'s ``state_dict`` names, read from the checkpoint when asked (in
    the checkpoint's dtype). Fails up front, like ``load_state_dict(strict=True)``, when the checkpoint's
    ``model.visual.*`` tensors are not exactly the tower's."""
    stored = {n[len(VISION_PREFIX):] for n in ckpt.tensors if n.startswith(VISION_PREFIX)}
    expected = set(visual.state_dict())
    if stored != expected:
        missing, unexpected = sorted(expected - stored), sorted(stored - expected)
        raise RuntimeError(f"Error(s) in loading state_dict for {type(visual).__name__}: missing keys {missing[:5]}, "
                           f"unexpected keys {unexpected[:5]} (under {VISION_PREFIX})")

    def read(name: str) -> torch.Tensor:
        return load_tensors(ckpt, [VISION_PREFIX + name])[VISION_PREFIX + name]

    return read


def load_hf_visual(ckpt: Checkpoint):
    """HF's own ``Qwen3VLVisionModel`` with the checkpoint's ``model.visual.*`` weights, in fp32."""
    import torch

    visual = visual_skeleton(ckpt)
    # The loaded tensors are adopted (assign=True) instead of copied: the tower then exists once in fp32.
    state = {k: v.to(torch.float32) for k, v in load_prefix(ckpt, VISION_PREFIX).items()}
    visual.load_state_dict(state, strict=True, assign=True)
    return visual.eval()
