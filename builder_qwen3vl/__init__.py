"""Build an onnxruntime-genai bundle (vision, embeddings, decoder, configs) from a Qwen3-VL checkpoint.

``build``, ``BuildOptions`` and the errors load on first use, so ``import builder_qwen3vl.runtime`` (running a
bundle) and ``builder_qwen3vl.verify`` load none of the build-time code.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_PUBLIC = {"build": ".pipeline", "BuildOptions": ".options", "BuildError": ".ground.errors", "InputError": ".ground.errors"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
