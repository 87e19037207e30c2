"""The bundle build's vision step: HF's tower from the checkpoint, exported as the plan says."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..bundle import contract
from .export import export_vision_encoder
from .load import load_hf_visual

if TYPE_CHECKING:
    from ..checkpoint.reader import Checkpoint
    from ..plan import BuildPlan


def vision_step(ckpt: Checkpoint, plan: BuildPlan, out: Path) -> Path:
    return export_vision_encoder(load_hf_visual(ckpt), out / contract.VISION.filename, dtype=plan.vision_dtype,
                                 weights=plan.vision_weights, stream_width=plan.stream_width)
