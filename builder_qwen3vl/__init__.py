"""Build an onnxruntime-genai bundle (vision, embeddings, decoder, configs) from a Qwen3-VL checkpoint."""

from .build import build
from .ground.errors import BuildError, InputError
from .options import BuildOptions

__version__ = "0.1.0"
__all__ = ["BuildError", "BuildOptions", "InputError", "build"]
