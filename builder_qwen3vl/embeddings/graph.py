"""The embeddings graph: table lookup, then image-feature rows placed on the (1 + D) * H wide stream
(the placement rule is in export.py's module docstring)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import torch
from onnx_ir import tape as ir_tape

from ..ground import contract

OPSET = 21
EMBED_GATHER_NODE = "/embed_tokens/Gather"  # the only node the int4 quantizer may touch


def _const(t: ir_tape.Tape, name: str, array: np.ndarray) -> ir.Value:
    return t.initializer(ir.tensor(array, name=name))


def _lookup_float(t: ir_tape.Tape, ids_T: ir.Value, table_VH: np.ndarray) -> ir.Value:
    table = _const(t, "model.embed_tokens.weight", table_VH)
    return t.op("Gather", [table, ids_T], {"axis": 0}, name=EMBED_GATHER_NODE)


def build_model(
    table_lookup: Callable[[ir_tape.Tape, ir.Value], ir.Value],
    hidden: int,
    stream_width: int,
    image_token_id: int,
    ir_dtype: ir.DataType,
    np_dtype: type,
) -> ir.Model:
    spec = contract.EMBEDDING
    ids_name, feats_name = spec.input_names()
    (out_name,) = spec.output_names()
    ids_BS = ir.Value(name=ids_name, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["batch_size", "sequence_length"]))
    feats_NW = ir.Value(name=feats_name, type=ir.TensorType(ir_dtype), shape=ir.Shape(["num_image_tokens", stream_width]))

    t = ir_tape.Tape()
    ids_T = t.op("Reshape", [ids_BS, _const(t, "/const/flat", np.array([-1]))], name="/input_ids/Flatten")
    text_TH = table_lookup(t, ids_T)
    if stream_width > hidden:
        pads = np.array([0, 0, 0, stream_width - hidden])  # zero DeepStack columns after the H text columns
        text_TW = t.op("Pad", [text_TH, _const(t, "/const/deepstack_pads", pads)], name="/embed_tokens/PadDeepStack")
    else:
        text_TW = text_TH

    is_image_T = t.op("Equal", [ids_T, _const(t, "/const/image_token_id", np.array(image_token_id))], name="/image_mask/Equal")
    is_image_i64_T = t.op("Cast", [is_image_T], {"to": ir.DataType.INT64}, name="/image_mask/Cast")
    # Image token k (0-based, row-major) reads row k + 1 of [0-row ; image_features]; text tokens read row 0.
    count_T = t.op("CumSum", [is_image_i64_T, _const(t, "/const/axis0", np.array(0))], name="/image_mask/CumSum")
    row_T = t.op("Mul", [count_T, is_image_i64_T], name="/image_rows/Mul")
    zero_1W = _const(t, "/const/zero_row", np.zeros((1, stream_width), dtype=np_dtype))
    feats_1NW = t.op("Concat", [zero_1W, feats_NW], {"axis": 0}, name="/image_rows/PrependZero")
    image_TW = t.op("Gather", [feats_1NW, row_T], {"axis": 0}, name="/image_rows/Gather")
    is_image_T1 = t.op("Unsqueeze", [is_image_T, _const(t, "/const/axes1", np.array([1]))], name="/image_mask/Unsqueeze")
    out_TW = t.op("Where", [is_image_T1, image_TW, text_TW], name="/merge/Where")

    shape_BS = t.op("Shape", [ids_BS], name="/output/ShapeBS")
    shape_BSW = t.op("Concat", [shape_BS, _const(t, "/const/width", np.array([stream_width]))], {"axis": 0}, name="/output/ShapeBSW")
    out = ir.Value(name=out_name, type=ir.TensorType(ir_dtype), shape=ir.Shape(["batch_size", "sequence_length", stream_width]))
    t.op("Reshape", [out_TW, shape_BSW], name="/output/Reshape", output=out)

    graph = ir.Graph(
        [ids_BS, feats_NW],
        [out],
        nodes=t.nodes,
        initializers=t.initializers,
        opset_imports={"": OPSET, "com.microsoft": 1},
        name="qwen3_vl_embeddings",
    )
    # IR 10: the first with INT4 initializers (int4 path) and the last onnxruntime 1.31 loads.
    return ir.Model(graph, ir_version=10, producer_name="builder_qwen3vl")


def float_table(embed_weight: torch.Tensor, np_dtype: type) -> np.ndarray:
    """[V, H] numpy table in ``np_dtype``; no copy when ``embed_weight`` is already float32 and so is np_dtype."""
    return embed_weight.detach().to(torch.float32).numpy().astype(np_dtype, copy=False)


def float_lookup(table_VH: np.ndarray, ir_dtype: ir.DataType) -> Callable[[ir_tape.Tape, ir.Value], ir.Value]:
    def lookup(t: ir_tape.Tape, ids_T: ir.Value) -> ir.Value:
        rows = _lookup_float(t, ids_T, table_VH)
        if ir.DataType.from_numpy(table_VH.dtype) == ir_dtype:
            return rows
        return t.op("Cast", [rows], {"to": ir_dtype}, name="/embed_tokens/Cast")

    return lookup
