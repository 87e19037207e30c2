"""Export the Qwen3-VL vision encoder (with DeepStack) to one ONNX file that serves every grid.

Pipeline: ``torch.onnx.export(dynamo=True)`` of ``Qwen3VLVisionExportModule`` -> rename the
symbolic dims -> turn weight Gemms into MatMul+Add (the weight quantizers and ORT's MatMul
kernels want MatMul) -> the weight format (quantize.py) -> save, with weights in ``<file>.data``
when the model is > 2 GB. Which dtype and format to use is the build plan's decision
(plan.resolve_vision_format); this module does what it is told.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx import TensorProto, helper

from ..ground.contract import VISION
from ..ground.logs import Progress, progress_line
from ..ground.vocab import DYNAMIC_FORMATS
from .model import Qwen3VLVisionExportModule
from .placeholders import WeightStore
from .quantize import (
    quantize_dynamic,
    quantize_matmul_weights,
    store_matmul_weights_fp16,
)

logger = logging.getLogger(__name__)

# Highest opset whose ops (LayerNormalization, Gelu via Erf/Tanh, Softmax) onnxruntime 1.31 CPU runs
# for this graph; 18 is what the torch dynamo exporter targets natively.
VISION_OPSET = 18
# protobuf cannot serialise a message over 2 GiB; stay clearly below it.
_EXTERNAL_DATA_THRESHOLD = 2_000_000_000

Dtype = Literal["float32", "float16"]  # element type of the graph (the bundle's io dtype)
WeightFormat = Literal["fp32", "fp16", "int8", "int4", "qint8", "quint8"]
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_SAME_FORMAT: dict[str, WeightFormat] = {"float32": "fp32", "float16": "fp16"}  # weights stored as the graph computes


def export_vision_encoder(
    visual: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    dtype: Dtype = "float32",
    weights: WeightFormat | None = None,
    block_size: int = 32,
    accuracy_level: int | None = None,
    example_grid: tuple[int, int, int] = (1, 4, 6),
    stream_width: int | None = None,
    weights_from: Callable[[str], torch.Tensor] | None = None,
) -> Path:
    """Write ``visual`` (an HF ``Qwen3VLVisionModel``) as one ONNX file at ``path``; return the path.

    dtype: compute and I/O precision of the graph (pixel_values and image_features use it too).
    weights: how MatMul weights are stored; defaults to the graph's own type. "fp16" in a float32 graph stores
    fp16 weights behind a Cast; "int8"/"int4" replace MatMuls with com.microsoft MatMulNBits
    (block-wise asymmetric, ``block_size`` along K; ``accuracy_level`` is MatMulNBits'
    compute-precision attribute, None = fp32 compute). "qint8"/"quint8": onnxruntime's
    ``quantize_dynamic`` of the MatMuls (per-channel s8 / u8 weights, activations quantized per call).
    example_grid: the grid traced at export; nothing about it is baked into the graph.
    stream_width: the W = (1 + D) * H the bundle's other models expect of image_features; checked if given.
    weights_from: the value of each of ``visual``'s parameters by its ``state_dict`` name (in any float dtype:
    cast to fp32, then to ``dtype``, as a tower loaded in fp32 would be); ``visual``'s own large parameters are
    then never read, so it can be a tower built without its weights (``load.visual_skeleton``); its small ones
    (up to 65,536 elements) are set from ``weights_from`` before the trace.

    Memory: the weights are never all in memory. The traced graph's weights are written to a temporary file
    beside ``path`` one tensor at a time, and every later stage (Gemm to MatMul, the weight format, the final
    save) holds the graph with placeholders for them (placeholders.py) and reads one tensor at a time.
    """
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"vision export: dtype {dtype!r}; expected one of {sorted(_TORCH_DTYPES)}")
    weights = weights or _SAME_FORMAT[dtype]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".vision-export-") as work:
        store = WeightStore()
        model = _trace_to_onnx(visual, _TORCH_DTYPES[dtype], example_grid, Path(work), store, weights_from)
        _drop_trace_metadata(model)
        _name_dims(model)
        _check_stream_width(model, stream_width)
        _gemm_to_matmul(model, store)
        if weights == "fp16" and dtype == "float32":
            store_matmul_weights_fp16(model, store)
        elif weights in ("int8", "int4"):
            model = quantize_matmul_weights(model, store, bits=8 if weights == "int8" else 4, block_size=block_size,
                                            accuracy_level=accuracy_level)
        elif weights in DYNAMIC_FORMATS:
            model = quantize_dynamic(model, store, DYNAMIC_FORMATS[weights], Path(work))
        _save(model, path, store)
    return path


# The export module's parameters that are not the tower's own: (tower parameter, how to derive the value).
_DERIVED_PARAMETERS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "patch_proj.weight": ("patch_embed.proj.weight", lambda w: w.reshape(w.shape[0], -1)),  # Conv3d as a Linear
    "patch_proj.bias": ("patch_embed.proj.bias", lambda b: b),
}


def _trace_to_onnx(visual: torch.nn.Module, dtype: torch.dtype, example_grid: tuple[int, int, int], work: Path,
                   store: WeightStore, weights_from: Callable[[str], torch.Tensor] | None) -> onnx.ModelProto:
    """The traced graph, as ``onnx.load`` of the exporter's saved model gives it, its weights as placeholders."""
    module = _export_module(visual, dtype, weights_from)
    t, h, w = example_grid
    grid = torch.tensor([list(example_grid)], dtype=torch.int64)
    pixel_values = torch.zeros(t * h * w, module.patch_proj.in_features, dtype=dtype)
    dims = torch.export.Dim
    dynamic_shapes = {
        "pixel_values": {0: dims("num_patches", min=1)},
        "image_grid_thw": {0: dims("num_images", min=1)},
    }
    progress_line("vision: tracing the graph (torch.export)", logger)
    with torch.no_grad():
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
    if weights_from is not None:
        _weights_from_source(program.model, module, dtype, weights_from)
    # ONNXProgram.save(external_data=True) is this ir.save; here with progress lines and the weights read one by one.
    initializers = program.model.graph.initializers.values()
    total = sum(v.const_value.nbytes for v in initializers if v.const_value is not None)
    progress = Progress("vision: reading the weights into the traced graph", None, "tensors", total, logger=logger)

    def saved(tensor: ir.TensorProtocol, info: ir.external_data.CallbackInfo) -> None:
        progress.total = info.total
        progress.update(1, tensor.nbytes)

    tmp_path = work / VISION.filename
    ir.save(program.model, tmp_path, external_data=VISION.filename + ".data", callback=saved)
    del program, module
    return store.load(tmp_path)


def _export_module(visual: torch.nn.Module, dtype: torch.dtype,
                   weights_from: Callable[[str], torch.Tensor] | None) -> Qwen3VLVisionExportModule:
    if weights_from is None:
        # The wrapper shares the HF submodules; converting a copy keeps the caller's model in its dtype.
        source = visual if next(visual.parameters()).dtype == dtype else copy.deepcopy(visual)
        module = Qwen3VLVisionExportModule(source).eval().to(dtype)
    else:
        # The exporter's optimizer reads small constants (it folds nodes with inputs of up to 8192 elements and
        # merges equal initializers of up to 1024): those parameters get their real values. The large ones stay
        # placeholders whose memory is never touched; they get the graph dtype without a conversion (which would
        # write every one of them), and the small ones and the buffers (rotary frequencies) are converted as usual.
        with torch.no_grad():
            for name, param in visual.named_parameters():
                if param.numel() <= _REAL_PARAMETER_ELEMENTS:
                    param.data = weights_from(name).to(torch.float32)
        module = Qwen3VLVisionExportModule(visual).eval()
        for sub in module.modules():
            for name, param in list(sub.named_parameters(recurse=False)):
                if param.dtype != dtype and param.numel() > _REAL_PARAMETER_ELEMENTS:
                    setattr(sub, name, torch.nn.Parameter(torch.empty(param.shape, dtype=dtype)))
        module = module.to(dtype)
    # rotary frequencies stay fp32 (HF computes the angles in fp32 whatever the model dtype)
    module.inv_freq = module.inv_freq.float()
    return module


def _weights_from_source(model: ir.Model, module: torch.nn.Module, dtype: torch.dtype,
                         weights_from: Callable[[str], torch.Tensor]) -> None:
    """Point every initializer that is one of ``module``'s parameters at its value from ``weights_from``."""
    params = dict(module.named_parameters())
    large = {name for name, p in params.items() if p.numel() > _REAL_PARAMETER_ELEMENTS}
    missing = sorted(large - set(model.graph.initializers))  # small ones may have been merged with an equal one
    if missing:
        raise RuntimeError(f"vision export: parameters not found among the traced graph's initializers: {missing[:5]}")
    for name, value in model.graph.initializers.items():
        if name not in params:
            if value.const_value is not None and value.const_value.size > _REAL_PARAMETER_ELEMENTS:
                raise RuntimeError(f"vision export: initializer {name} ({value.const_value.size} elements) is not a "
                                   "parameter: a constant folded from placeholder weights?")
            continue
        source, derive = _DERIVED_PARAMETERS.get(name, (name, lambda x: x))
        traced = value.const_value

        def read(source: str = source, derive: Callable = derive, traced: ir.TensorProtocol = traced) -> ir.Tensor:
            array = derive(weights_from(source).to(torch.float32)).to(dtype).contiguous().numpy()
            if tuple(array.shape) != tuple(traced.shape) or ir.DataType.from_numpy(array.dtype) != traced.dtype:
                raise RuntimeError(f"vision export: {source} is {array.dtype} {list(array.shape)}, the graph's "
                                   f"{traced.name} is {traced.dtype} {list(traced.shape)}")
            return ir.Tensor(array, name=traced.name)

        value.const_value = ir.LazyTensor(read, traced.dtype, traced.shape, name=traced.name)


# Parameters of up to this many elements are real during the trace (see _export_module); above onnxscript's
# constant-folding input limit (8192 elements), with room.
_REAL_PARAMETER_ELEMENTS = 1 << 16


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


def _gemm_to_matmul(model: onnx.ModelProto, store: WeightStore) -> None:
    """Rewrite ``Gemm(A, W, b, transB=1)`` with a constant W as ``MatMul(A, W^T) + b``."""
    inits = _initializers(model)
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        source = TensorProto()
        source.CopyFrom(inits[node.input[1]])  # a placeholder: a few bytes
        transpose = bool(attrs.get("transB", 0))
        shape = tuple(reversed(source.dims)) if transpose else tuple(source.dims)

        def transposed(source: TensorProto = source, transpose: bool = transpose) -> np.ndarray:
            weight = store.array(source)
            return np.ascontiguousarray(weight.T) if transpose else weight

        weight_name = node.input[1] + "_KN"
        like = np.empty(0, helper.tensor_dtype_to_np_dtype(source.data_type))
        model.graph.initializer.append(store.tensor(like, shape, weight_name, transposed))
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


def _save(model: onnx.ModelProto, path: Path, store: WeightStore) -> None:
    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()
    size = sum(store.nbytes(init) for init in model.graph.initializer)
    progress = Progress(f"vision: writing {path.name}", total_bytes=size, logger=logger)
    if size > _EXTERNAL_DATA_THRESHOLD:
        logger.info("vision encoder weights are %.2f GB; writing them to %s", size / 1e9, data_path.name)
        store.save(model, path, external_data=data_path.name, size_threshold=1024,
                   progress=lambda done, total: progress.update(0, done_bytes=done))
    else:
        store.save(model, path, progress=lambda done, total: progress.update(0, done_bytes=done))
    progress.bytes = size  # the small tensors are written with the graph, uncounted
    progress.finish()
