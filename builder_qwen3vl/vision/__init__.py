"""vision_encoder.onnx: the Qwen3-VL vision tower with DeepStack, one grid-independent ONNX file.

``load.py`` builds HF's own tower from the checkpoint, ``model.py`` wraps it for export, ``export.py``
traces and saves it, ``quantize.py`` changes how its weights are stored (``formats.py``: which formats
exist and the default per precision), ``build.py`` is the bundle build's step. Names import lazily: the
formats are read by the option parser, which must not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "VISION_OPSET": ".export",
    "export_vision_encoder": ".export",
    "Qwen3VLVisionExportModule": ".model",
    "check_grid": ".model",
    "load_hf_visual": ".load",
    "visual_skeleton": ".load",
    "checkpoint_weights": ".load",
    "vision_step": ".build",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
