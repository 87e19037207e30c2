"""The bundle build's vision step: HF's tower for the checkpoint's config, exported as the plan says, its
weights read from the checkpoint one tensor at a time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..ground import contract
from .export import export_vision_encoder
from .load import checkpoint_weights, visual_skeleton

if TYPE_CHECKING:
    from ..checkpoint.reader import Checkpoint
    from ..plan import BuildPlan


def vision_step(ckpt: Checkpoint, plan: BuildPlan, out: Path) -> Path:
    visual = visual_skeleton(ckpt)
    return export_vision_encoder(visual, out / contract.VISION.filename, dtype=plan.io_dtype,
                                 weights=plan.vision_weights, stream_width=plan.stream_width,
                                 weights_from=checkpoint_weights(ckpt, visual))
