"""embeddings.onnx: the token table and the image features placed on the (1 + D) * H wide stream.

``graph.py`` is the graph, ``int4.py`` the quantized table, ``shared_table.py`` reads the decoder's tied
int4 lm_head in place of a second table, ``export.py`` writes the file, ``build.py`` is the bundle build's
step (share or own). Names import lazily: the option parser reads the precisions without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

EMBEDDINGS_PRECISIONS = ("fp32", "fp16", "int4")

_LAZY = {"export_embeddings": ".export", "EmbeddingsExport": ".export", "embeddings_step": ".build",
         "find_shared_int4_table": ".shared_table"}
__all__ = ["EMBEDDINGS_PRECISIONS", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
