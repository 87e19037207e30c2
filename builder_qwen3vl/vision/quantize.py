"""The vision graph's weight formats (ground/vocab.py, chosen by plan.resolve_vision_format): fp16 storage, MatMulNBits, onnxruntime's dynamic int8.

The model's large tensors are placeholders (placeholders.py): onnxruntime's quantizers read each weight
through ``WeightStore.readable`` when they reach it, and what they write comes back as placeholders too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..ground.logs import Progress
from .placeholders import WeightStore


def store_matmul_weights_fp16(model: onnx.ModelProto, store: WeightStore) -> None:
    """Store fp32 MatMul weights as fp16 behind a Cast back to fp32 (half the file, same graph dtype)."""
    inits = {init.name: init for init in model.graph.initializer}
    cast_nodes: list[onnx.NodeProto] = []
    done: set[str] = set()
    for node in model.graph.node:
        name = node.input[1] if node.op_type == "MatMul" else None
        if name is None or name not in inits or name in done or inits[name].data_type != TensorProto.FLOAT:
            continue
        source = TensorProto()
        source.CopyFrom(inits[name])
        half = store.tensor(np.empty(0, np.float16), tuple(source.dims), name + "_fp16",
                            lambda source=source: store.array(source).astype(np.float16))
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


def _matmul_weights(model: onnx.ModelProto, store: WeightStore) -> int:
    """MatMul weights held as placeholders (the ones a quantizer's reads are counted for)."""
    large = {init.name for init in model.graph.initializer if store.tensor_source(init) is not None}
    return len({node.input[1] for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in large})


def _counting(progress: Progress) -> Callable[[str], None]:
    seen: set[str] = set()

    def on_read(name: str) -> None:
        if name not in seen:
            seen.add(name)
            progress.update(done=len(seen))

    return on_read


def quantize_matmul_weights(
    model: onnx.ModelProto, store: WeightStore, *, bits: int, block_size: int, accuracy_level: int | None
) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=False, accuracy_level=accuracy_level
    )
    progress = Progress(f"vision: quantizing MatMul weights (int{bits} MatMulNBits)", _matmul_weights(model, store), "weights")
    with store.readable(on_read=_counting(progress)):
        quantizer.process()
    return quantizer.model.model


def quantize_dynamic(model: onnx.ModelProto, store: WeightStore, weight_type: str, work: Path) -> onnx.ModelProto:
    """onnxruntime's ``quantize_dynamic``; its output is written into ``work``, which must outlive the returned
    model (its weights are read from there when it is saved)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / "quantized.onnx"
    progress = Progress(f"vision: quantizing MatMul weights ({weight_type} per channel)", _matmul_weights(model, store), "weights")
    with store.readable(on_read=_counting(progress)):
        quantize_dynamic(model, out, op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=getattr(QuantType, weight_type), use_external_data_format=True)
    return store.load(out)
