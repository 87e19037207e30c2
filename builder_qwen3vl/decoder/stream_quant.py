"""og's int4/int8 step (``to_nbits``) without the whole float model in memory: each MatMul weight quantized as it is written.

og's ``save_model`` quantizes by serialising the whole float graph into one protobuf and running onnxruntime's
``MatMulNBitsQuantizer`` over it (for the 32B: 126 GB of float32). With og's default settings that quantizer
is ``DefaultWeightOnlyQuantizer``: for each MatMul (op type in ``op_types_to_quantize``, not in
``nodes_to_exclude``) with a 2-D constant weight it calls MLAS's blockwise quantizer (``qbits_block_quant``)
and replaces the node by a ``com.microsoft`` MatMulNBits. ``quantize_in_place`` makes the same rewrite on og's
graph (``onnx_ir``) directly:

- the node ``<name>_Q<bits>`` in the MatMul's place, inputs ``[A, <W>_Q<bits>, <W>_scales(, <W>_zero_points)]``,
  attributes K, N, accuracy_level (when non-zero), bits, block_size, as the quantizer's ``onnx.helper.make_node``
  writes them (sorted by name); the output keeps the MatMul's value (name, type, shape);
- the new initializers appended after og's, node by node, in the quantizer's order, and the weights no node
  uses any more removed (its ``clean_initializers``); ``com.microsoft`` opset 1.

The quantized initializers are ``QuantizedWeight`` tensors: when ``ir.save`` writes one, it reads the float
weight (a ``CheckpointTensor``: the checkpoint parameter) and quantizes it a block of columns at a time with
the quantizer's own ``qbits_block_quant`` (MLAS quantizes each column independently, so the bytes are those
of the whole-matrix call); the scales (and zero points), computed with the weight, wait for their turn in a
small cache. The bytes are those og's ``to_nbits`` writes; tests/test_lazy_decoder.py compares them.

Settings the rewrite does not reproduce (``unsupported`` says which) keep og's ``to_nbits``.
"""

from __future__ import annotations

import logging
from typing import Any

from . import lazy_weights
from .lazy_weights import CheckpointTensor, lazy_tensor_base

log = logging.getLogger(__name__)

NBITS_DTYPES = {"INT4", "UINT4", "INT8", "UINT8"}


def quantizes_weights(model: Any) -> bool:
    """og's builder ``model`` writes MatMulNBits through onnxruntime's weight-only quantizer at save time
    (an int4 / int8 precision, not a checkpoint already quantized into QDQ)."""
    return model.onnx_dtype.name in NBITS_DTYPES and not (model.quant_type is not None and model.quant_attrs["use_qdq"])


def unsupported(model: Any) -> str | None:
    """Why the streaming rewrite cannot stand in for og's ``to_nbits`` on og builder model ``model``, or None."""
    qa = model.quant_attrs
    if qa.get("use_qdq"):
        return "QDQ format (use_qdq)"
    method = getattr(model, "quantization_algo", "default")
    if method != "default":
        return f"algo_config {method}"
    if getattr(model, "int4_customized_weight_config", None):
        return "mixed-precision MatMuls (per-node bits)"
    if getattr(model, "exact_quant_override_names", None):
        return "per-node quantization overrides"
    if model.ep == "cuda" and model.matmul_attrs.get("weights_prepacked", 0) > 0 and qa["is_symmetric"]:
        return "CUDA weight prepacking"
    if qa["bits"] not in (4, 8):
        return f"{qa['bits']}-bit weights"
    op_types = _op_types(qa)
    if op_types - {"MatMul"}:
        nodes_to_exclude = set(qa["nodes_to_exclude"])
        for node in model.model.graph:
            if (node.op_type in op_types - {"MatMul"} and node.name not in nodes_to_exclude
                    and any(v is not None and v.is_initializer() for v in node.inputs)):
                return f"{node.op_type} quantization ({node.name})"
    weights: dict[str, str] = {}
    for node in model.model.graph:
        if any(attr.type.name in ("GRAPH", "GRAPHS") for attr in node.attributes.values()):
            return f"subgraphs ({node.name})"
        if not _quantizes(node, qa):
            continue
        weight = node.inputs[1]
        if weight.name in weights:
            return f"weight {weight.name} shared by {weights[weight.name]} and {node.name}"
        weights[weight.name] = node.name
        rank = len(weight.const_value.shape)
        if rank > 2 and any(d != 1 for d in weight.const_value.shape[:-2]):
            continue  # the quantizer leaves batched weights alone; so does the rewrite
        if rank > 2:
            return f"an N-D MatMul weight ({weight.name}, shape {list(weight.const_value.shape)})"
        if weight.const_value.dtype.name not in ("FLOAT", "FLOAT16", "BFLOAT16"):
            return f"a {weight.const_value.dtype.name} MatMul weight ({weight.name})"
    return None


def _op_types(qa: dict[str, Any]) -> set[str]:
    return set(qa["op_types_to_quantize"]) if qa["op_types_to_quantize"] else {"MatMul"}  # WeightOnlyQuantConfig's default


def _quantizes(node: Any, qa: dict[str, Any]) -> bool:
    """The quantizer's test: a MatMul to quantize whose weight is a graph initializer with data."""
    if node.op_type != "MatMul" or len(node.inputs) < 2:  # cheapest first: most nodes stop here
        return False
    if node.name in qa["nodes_to_exclude"] or "MatMul" not in _op_types(qa):
        return False
    weight = node.inputs[1]
    return weight is not None and weight.is_initializer() and weight.const_value is not None


def quantize_in_place(model: Any) -> int:
    """Rewrite og builder model ``model``'s graph as ``to_nbits`` would (see the module docstring). Returns the node count."""
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 DefaultWeightOnlyQuantizer)
    from onnxruntime.quantization.quant_utils import QuantFormat

    qa = model.quant_attrs
    bits, block_size, symmetric = qa["bits"], qa["matmul_block_size"], qa["is_symmetric"]
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=symmetric, accuracy_level=qa["accuracy_level"],
        quant_format=QuantFormat.QOperator, op_types_to_quantize=qa["op_types_to_quantize"], bits=bits,
    )
    quantizer = DefaultWeightOnlyQuantizer(config)
    graph = model.model.graph
    graph.opset_imports["com.microsoft"] = 1
    cache: dict[str, dict[str, Any]] = {}
    count = 0
    for node in list(graph):
        if not _quantizes(node, qa):
            continue
        weight = node.inputs[1]
        float_tensor = weight.const_value
        if len(float_tensor.shape) != 2:
            continue  # < 2: the quantizer skips it; batched (unit leading dims refused by `unsupported`)
        k, n = float_tensor.shape
        k_blocks = (k + block_size - 1) // block_size
        kpack = 8 // bits
        blob = (block_size + kpack - 1) // kpack
        scale_dtype = ir.DataType.FLOAT16 if float_tensor.dtype == ir.DataType.FLOAT16 else ir.DataType.FLOAT
        if float_tensor.dtype == ir.DataType.BFLOAT16:
            scale_dtype = ir.DataType.BFLOAT16
        specs = [(f"{weight.name}_Q{bits}", ir.DataType.UINT8, (n, k_blocks, blob), "packed"),
                 (f"{weight.name}_scales", scale_dtype, (n, k_blocks), "scales")]
        if not symmetric:
            specs.append((f"{weight.name}_zero_points", ir.DataType.UINT8, (n, (k_blocks + kpack - 1) // kpack), "zero_points"))
        source = _QuantizationSource(quantizer, float_tensor, cache, [s[0] for s in specs])
        values = []
        for name, dtype, shape, part in specs:
            tensor = QuantizedWeight(source, part, dtype=dtype, shape=ir.Shape(shape), name=name)
            value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape), const_value=tensor)
            values.append(value)
        attrs = {"K": k, "N": n, "bits": bits, "block_size": block_size}
        if qa["accuracy_level"]:
            attrs["accuracy_level"] = qa["accuracy_level"]
        old_out = node.outputs[0]
        new_out = ir.Value(type=old_out.type, shape=old_out.shape, doc_string=old_out.doc_string,
                           metadata_props=dict(old_out.metadata_props))
        new = ir.Node("com.microsoft", "MatMulNBits", [node.inputs[0], *values],
                      [ir.AttrInt64(key, attrs[key]) for key in sorted(attrs)],
                      outputs=[new_out], name=f"{node.name}_Q{bits}")
        # The packed weight, its scales (and zero points) follow og's initializers, in node order.
        for value in values:
            graph.register_initializer(value)
        graph.insert_after(node, new)
        ir.convenience.replace_all_uses_with(old_out, new_out, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        new_out.name = old_out.name
        count += 1
    # The quantizer's clean_initializers: drop initializers nothing reads any more.
    outputs = {v.name for v in graph.outputs}
    for name in [name for name, value in graph.initializers.items() if not value.uses() and name not in outputs]:
        graph.initializers.pop(name)
    return count


class _QuantizationSource:
    """One MatMul weight's quantization: packed blocks streamed to the file, scales / zero points kept for their turn."""

    def __init__(self, quantizer: Any, float_tensor: Any, cache: dict[str, dict[str, Any]], names: list[str]):
        self.quantizer, self.float_tensor, self.cache, self.names = quantizer, float_tensor, cache, names

    def _columns(self) -> Any:
        """float32/float16 numpy [K, columns] blocks of the weight, in column order, as the quantizer reads it."""
        import numpy as np

        tensor = self.float_tensor
        if isinstance(tensor, CheckpointTensor) and tensor.layout is not None:
            from onnx_ir.tensor_adapters import TorchTensor

            fresh = tensor.params.read(tensor.param)
            k, n = tensor.shape
            step = max(1, lazy_weights.BLOCK_BYTES // max(1, k * 4))
            for start in range(0, n, step):
                stop = min(n, start + step)
                yield np.ascontiguousarray(TorchTensor(tensor.columns(start, stop, fresh)).numpy())
        else:
            yield np.ascontiguousarray(tensor.numpy())

    def quantize(self, file: Any | None) -> dict[str, Any]:
        """Quantize the weight; write the packed bytes to ``file`` (or keep them); return the other parts."""
        import ml_dtypes
        import numpy as np

        packed_parts, scales_parts, zero_parts = [], [], []
        for block in self._columns():
            bf16 = block.dtype == ml_dtypes.bfloat16
            if bf16:
                block = block.astype(np.float32)
            packed, scales, zero_points = self.quantizer.qbits_block_quant(block)
            if bf16:
                scales = scales.astype(ml_dtypes.bfloat16)
            if file is not None:
                file.write(np.ascontiguousarray(packed).tobytes())
            else:
                packed_parts.append(packed)
            scales_parts.append(scales)
            zero_parts.append(zero_points)
        parts = {"scales": np.concatenate(scales_parts), "zero_points": np.concatenate(zero_parts)}
        if file is None:
            parts["packed"] = np.concatenate(packed_parts)
        return parts

    def part(self, part: str, file: Any | None = None) -> Any:
        key = self.names[0]
        if part == "packed":
            parts = self.quantize(file)
            wanted = [p for p, name in zip(("scales", "zero_points"), self.names[1:])]
            self.cache[key] = {p: parts[p] for p in wanted}
            return None if file is not None else parts["packed"]
        cached = self.cache.get(key)
        if cached is None or part not in cached:
            cached = {p: v for p, v in self.quantize(None).items() if p != "packed"}
            self.cache[key] = cached
        value = cached.pop(part)
        if not cached:
            self.cache.pop(key, None)
        return value


class QuantizedWeight(lazy_tensor_base()):  # type: ignore[misc]
    """A MatMulNBits initializer (packed weight, scales or zero points) computed when it is written."""

    def __init__(self, source: _QuantizationSource, part: str, **kwargs: Any):
        self.source, self.part = source, part
        super().__init__(self._evaluate_part, **kwargs)

    def _evaluate_part(self) -> Any:
        import onnx_ir as ir

        array = self.source.part(self.part)
        return ir.Tensor(array, dtype=self.dtype, name=self.name)

    def tofile(self, file: Any) -> None:
        if self.part == "packed":
            self.source.part("packed", file)
        else:
            super().tofile(file)
