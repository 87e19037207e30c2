"""Qwen3-VL vision encoder (with DeepStack) exported to one grid-independent ONNX file."""

from .export import VISION_OPSET, export_vision_encoder
from .model import Qwen3VLVisionExportModule, check_grid

__all__ = [
    "VISION_OPSET",
    "Qwen3VLVisionExportModule",
    "check_grid",
    "export_vision_encoder",
]
