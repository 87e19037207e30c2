"""The vision graph's weight formats (formats.py): fp16 storage, MatMulNBits, onnxruntime's dynamic int8."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def store_matmul_weights_fp16(model: onnx.ModelProto) -> None:
    """Store fp32 MatMul weights as fp16 behind a Cast back to fp32 (half the file, same graph dtype)."""
    inits = {init.name: init for init in model.graph.initializer}
    cast_nodes: list[onnx.NodeProto] = []
    done: set[str] = set()
    for node in model.graph.node:
        name = node.input[1] if node.op_type == "MatMul" else None
        if name is None or name not in inits or name in done or inits[name].data_type != TensorProto.FLOAT:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16), name + "_fp16")
        model.graph.initializer.append(half)
        cast_nodes.append(helper.make_node("Cast", [half.name], [name], name=name + "_Cast", to=TensorProto.FLOAT))
        done.add(name)
    keep = [init for init in model.graph.initializer if init.name not in done]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    # Casts of constants have no inputs from the graph, so putting them first keeps topological order.
    nodes = cast_nodes + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def quantize_matmul_weights(
    model: onnx.ModelProto, *, bits: int, block_size: int, accuracy_level: int | None
) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=False, accuracy_level=accuracy_level
    )
    quantizer.process()
    return quantizer.model.model


def quantize_dynamic(model: onnx.ModelProto, weight_type: str) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quantized.onnx"
        quantize_dynamic(model, out, op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=getattr(QuantType, weight_type), use_external_data_format=True)
        return onnx.load(str(out), load_external_data=True)
