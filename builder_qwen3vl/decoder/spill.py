"""Lower the og builder's peak memory when onnxruntime's whole-model quantizer runs: spill its float graph to disk first.

The default int4 build quantizes each MatMul as it is written (stream_quant.py) and needs none of this; og's
``to_nbits`` still runs for the settings that rewrite does not reproduce (mixed precision, QDQ, rtn / k_quant)
or when ``spill_before_quantizing`` asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def spill_to_disk(model: Any, folder: Path) -> Any:
    """Write og's float graph to ``folder`` and return it with every initializer read back lazily from there.

    og's int4 step (``to_nbits``) serialises the whole float model into one protobuf for onnxruntime's
    quantizer while the checkpoint's memory-mapped tensors are still referenced: for the 2B that peaks at
    13 GiB. Saved first (one tensor at a time), the float weights never sit in memory together, and the
    quantizer reads each weight from the file when it reaches its node. Locations are absolute because
    onnxruntime's quantizer resolves them without a base folder. Costs a float32 copy of the decoder on
    disk while it runs (2B: 7 GB, 4B: 16 GB), inside the output folder being built.
    """
    import onnx_ir as ir

    path = folder / "float_model.onnx"
    ir.save(model, path, external_data="float_model.onnx.data", size_threshold_bytes=0)
    spilled = ir.load(path)
    for value in spilled.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            value.const_value = ir.ExternalTensor(
                folder / tensor.location, tensor.offset, tensor.length, tensor.dtype,
                shape=tensor.shape, name=tensor.name, base_dir="",
            )
    return spilled


def quantizes_from_files(model: Any) -> bool:
    """True when og's save_model will quantize ``model`` (og's builder model) with onnxruntime's default
    weight-only quantizer, MatMuls only.

    Only that path reads each weight through onnx_ir, which follows the spilled tensors' absolute
    locations; the rtn / k_quant paths and Gather quantization use onnx.numpy_helper, which refuses them.
    """
    from .stream_quant import quantizes_weights

    constant_gathers = any(
        node.op_type == "Gather" and node.inputs[0] is not None and node.inputs[0].const_value is not None
        for node in model.model.graph
    )  # none with exclude_embeds; a table lookup would be one
    return (
        quantizes_weights(model)
        and getattr(model, "quantization_algo", "default") == "default"
        and not ("Gather" in model.quant_attrs["op_types_to_quantize"] and constant_gathers)
    )
