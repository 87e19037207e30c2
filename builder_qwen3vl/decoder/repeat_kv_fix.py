"""A fix-up of og's fp16 decoders on CPU: shape labels that mislead onnxruntime's memory planner."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def drop_repeat_kv_shape_labels(model_path: Path) -> None:
    """Remove og's value_info for the repeat_kv tensors of its MultiHeadAttention decoders (fp16 on CPU).

    og labels their KV length "sequence_length" where it is past + new tokens; onnxruntime 1.31's
    memory planner trusts the label and reuses a prefill-sized buffer at the first decode step
    ("Shape mismatch attempting to re-use buffer"). Without the entries onnxruntime infers the
    shapes itself. GroupQueryAttention graphs (fp32/int4) have no repeat_kv and are left untouched.
    """
    import onnx

    if not model_path.is_file():
        return
    model = onnx.load(str(model_path), load_external_data=False)
    keep = [info for info in model.graph.value_info if "/repeat_kv/" not in info.name]
    dropped = len(model.graph.value_info) - len(keep)
    if not dropped:
        return
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    onnx.save(model, str(model_path))
    log.debug("decoder: dropped %d repeat_kv value_info entries (KV length mislabelled by og)", dropped)
