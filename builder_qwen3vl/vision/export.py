"""Export the Qwen3-VL vision encoder (with DeepStack) to one ONNX file that serves every grid.

Pipeline: ``torch.onnx.export(dynamo=True)`` of ``Qwen3VLVisionExportModule`` -> rename the
symbolic dims -> turn weight Gemms into MatMul+Add (the weight quantizers and ORT's MatMul
kernels want MatMul) -> the weight format (quantize.py) -> save, with weights in ``<file>.data``
when the model is > 2 GB. Which dtype and format to use is the build plan's decision
(formats.resolve_vision_format); this module does what it is told.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..bundle.contract import VISION
from .formats import DYNAMIC_FORMATS
from .model import Qwen3VLVisionExportModule
from .quantize import quantize_dynamic, quantize_matmul_weights, store_matmul_weights_fp16

logger = logging.getLogger(__name__)

# Highest opset whose ops (LayerNormalization, Gelu via Erf/Tanh, Softmax) onnxruntime 1.31 CPU runs
# for this graph; 18 is what the torch dynamo exporter targets natively.
VISION_OPSET = 18
# protobuf cannot serialise a message over 2 GiB; stay clearly below it.
_EXTERNAL_DATA_THRESHOLD = 2_000_000_000

Dtype = Literal["fp32", "fp16"]
WeightFormat = Literal["fp32", "fp16", "int8", "int4", "qint8", "quint8"]
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def export_vision_encoder(
    visual: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    dtype: Dtype = "fp32",
    weights: WeightFormat | None = None,
    block_size: int = 32,
    accuracy_level: int | None = None,
    example_grid: tuple[int, int, int] = (1, 4, 6),
    stream_width: int | None = None,
) -> Path:
    """Write ``visual`` (an HF ``Qwen3VLVisionModel``) as one ONNX file at ``path``; return the path.

    dtype: compute and I/O precision of the graph (pixel_values and image_features use it too).
    weights: how MatMul weights are stored; defaults to ``dtype``. "fp16" with dtype "fp32" stores
    fp16 weights behind a Cast; "int8"/"int4" replace MatMuls with com.microsoft MatMulNBits
    (block-wise asymmetric, ``block_size`` along K; ``accuracy_level`` is MatMulNBits'
    compute-precision attribute, None = fp32 compute). "qint8"/"quint8": onnxruntime's
    ``quantize_dynamic`` of the MatMuls (per-channel s8 / u8 weights, activations quantized per call).
    example_grid: the grid traced at export; nothing about it is baked into the graph.
    stream_width: the W = (1 + D) * H the bundle's other models expect of image_features; checked if given.
    """
    weights = weights or dtype
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    model = _trace_to_onnx(visual, _TORCH_DTYPES[dtype], example_grid)
    _drop_trace_metadata(model)
    _name_dims(model)
    _check_stream_width(model, stream_width)
    _gemm_to_matmul(model)
    if weights == "fp16" and dtype == "fp32":
        store_matmul_weights_fp16(model)
    elif weights in ("int8", "int4"):
        model = quantize_matmul_weights(model, bits=8 if weights == "int8" else 4, block_size=block_size,
                                        accuracy_level=accuracy_level)
    elif weights in DYNAMIC_FORMATS:
        model = quantize_dynamic(model, DYNAMIC_FORMATS[weights])
    _save(model, path)
    return path


def _trace_to_onnx(visual: torch.nn.Module, dtype: torch.dtype, example_grid: tuple[int, int, int]) -> onnx.ModelProto:
    # The wrapper shares the HF submodules; converting a copy keeps the caller's model in its dtype.
    source = visual if next(visual.parameters()).dtype == dtype else copy.deepcopy(visual)
    module = Qwen3VLVisionExportModule(source).eval().to(dtype)
    # rotary frequencies stay fp32 (HF computes the angles in fp32 whatever the model dtype)
    module.inv_freq = module.inv_freq.float()
    t, h, w = example_grid
    grid = torch.tensor([list(example_grid)], dtype=torch.int64)
    pixel_values = torch.zeros(t * h * w, module.patch_proj.in_features, dtype=dtype)
    dims = torch.export.Dim
    dynamic_shapes = {
        "pixel_values": {0: dims("num_patches", min=1)},
        "image_grid_thw": {0: dims("num_images", min=1)},
    }
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        tmp_path = os.path.join(tmp, VISION.filename)
        program = torch.onnx.export(
            module,
            (pixel_values, grid),
            input_names=VISION.input_names(),
            output_names=VISION.output_names(),
            dynamic_shapes=dynamic_shapes,
            opset_version=VISION_OPSET,
            dynamo=True,
            verbose=False,
        )
        program.save(tmp_path, external_data=True)
        del program
        return onnx.load(tmp_path, load_external_data=True)


def _drop_trace_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug metadata: its stack traces hold this package's absolute source paths
    and line numbers, so the same checkpoint would give different bytes from another checkout or after any edit."""
    for node in model.graph.node:
        del node.metadata_props[:]


def _name_dims(model: onnx.ModelProto) -> None:
    """Give the graph outputs the declared dim names (the exporter writes e.g. '(num_patches//4)')."""
    for value in model.graph.output:
        for axis, name in VISION.dynamic_axes().get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_param = name


def _check_stream_width(model: onnx.ModelProto, stream_width: int | None) -> None:
    if stream_width is None:
        return
    dims = model.graph.output[0].type.tensor_type.shape.dim
    got = dims[-1].dim_value if dims else None
    if got != stream_width:
        raise RuntimeError(f"vision export: {model.graph.output[0].name} is {got} wide, the build plan says W = {stream_width}")


def _initializers(model: onnx.ModelProto) -> dict[str, TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def _gemm_to_matmul(model: onnx.ModelProto) -> None:
    """Rewrite ``Gemm(A, W, b, transB=1)`` with a constant W as ``MatMul(A, W^T) + b``."""
    inits = _initializers(model)
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        weight_name = node.input[1] + "_KN"
        model.graph.initializer.append(numpy_helper.from_array(weight, weight_name))
        inits[weight_name] = model.graph.initializer[-1]
        has_bias = len(node.input) > 2 and node.input[2]
        matmul_out = node.output[0] + "_matmul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [matmul_out], name=node.name + "_MatMul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [matmul_out, node.input[2]], [node.output[0]], name=node.name + "_Add"))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _drop_unused_initializers(model)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _save(model: onnx.ModelProto, path: Path) -> None:
    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()
    size = sum(len(init.raw_data) for init in model.graph.initializer)
    if size > _EXTERNAL_DATA_THRESHOLD:
        logger.info("vision encoder weights are %.2f GB; writing them to %s", size / 1e9, data_path.name)
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_path.name, size_threshold=1024)
    else:
        onnx.save_model(model, path)
