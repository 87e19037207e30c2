"""embeddings.onnx: token embedding lookup plus image-feature placement on the wide DeepStack stream.

Output row for token t (width W = (1 + D) * H):
- text token: ``[embed_tokens(id) | 0 | ... | 0]``
- image token (id == image_token_id): the next unused row of ``image_features``, in row-major
  (batch, sequence) order, i.e. HF's ``masked_scatter`` placement.

onnxruntime-genai runs this model at every step, and on decode steps it passes ``image_features``
with 0 rows, so nothing here may index ``image_features`` unless an image token asks for it.
The trick: prepend one zero row to ``image_features`` and gather row ``cumsum(is_image)`` for image
tokens and row 0 for text tokens. More image tokens than feature rows makes the Gather index run
past the end, which onnxruntime reports as an error instead of silently reusing a row.

int4 stores the table block-quantized (4 bits, per-row blocks along H) and dequantizes only the
gathered rows with onnxruntime's ``GatherBlockQuantized`` contrib op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from onnx_ir import tape as ir_tape

from . import io_spec

log = logging.getLogger(__name__)

EMBEDDINGS_PRECISIONS = ("fp32", "fp16", "int4")
IO_DTYPES = {"float32": (ir.DataType.FLOAT, np.float32), "float16": (ir.DataType.FLOAT16, np.float16)}
OPSET = 21
_QUANT_CHUNK_ROWS = 8192  # rows quantized at a time: bounds the float32 working copy to ~8192 * H * 4 bytes


@dataclass(frozen=True)
class QuantizedTable:
    """A [V, H] table in 4-bit blocks along H, packed the way GatherBlockQuantized (uint8 data, bits=4) reads it."""

    data_VP: np.ndarray  # uint8 [V, Hp / 2], two values per byte, low nibble first (Hp = H padded to the block size)
    scales_VB: np.ndarray  # float [V, Hp / block_size]
    zero_points_VZ: np.ndarray | None  # uint8 [V, ceil(B / 2)] packed like data; None: symmetric (implicit zero point 8)
    block_size: int
    hidden_size: int  # H before padding
    max_abs_error: float  # max |dequant(q) - w| over the table
    rel_rms_error: float  # ||dequant(q) - w||_2 / ||w||_2


@dataclass(frozen=True)
class EmbeddingsExport:
    path: Path
    precision: str
    io_dtype: str  # "float32" or "float16": dtype of image_features and inputs_embeds
    hidden_size: int  # H
    width: int  # (1 + D) * H, the last dim of image_features and inputs_embeds
    int4_max_abs_error: float | None = None
    int4_rel_rms_error: float | None = None


def default_io_dtype(precision: str) -> str:
    """fp16 tables run in float16; fp32 and int4 (CPU: the og decoder's io dtype is float32) in float32."""
    return "float16" if precision == "fp16" else "float32"


def _pack_nibbles(values_VK: np.ndarray) -> np.ndarray:
    """uint8 [V, K] with values 0..15 (K even) -> uint8 [V, K / 2], element 2j in the low nibble."""
    return (values_VK[:, 0::2] | (values_VK[:, 1::2] << 4)).astype(np.uint8)


def quantize_4bit_blockwise(weight_VH: torch.Tensor, block_size: int = 32, symmetric: bool = True) -> QuantizedTable:
    """Round-to-nearest 4-bit quantization in blocks of ``block_size`` along H.

    Symmetric: q = clip(round(w / s), -8, 7) + 8 with s = absmax / 7 (zero point 8, not stored).
    Asymmetric: s = (max - min) / 15, zp = clip(round(-min / s), 0, 15), q = clip(round(w / s) + zp, 0, 15).
    """
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size: expected a power of two >= 16, got {block_size}")
    vocab, hidden = weight_VH.shape
    padded = -(-hidden // block_size) * block_size
    blocks = padded // block_size
    data = np.empty((vocab, padded // 2), dtype=np.uint8)
    scales = np.empty((vocab, blocks), dtype=np.float32)
    zero_points = None if symmetric else np.empty((vocab, -(-blocks // 2)), dtype=np.uint8)
    max_err, err_sq, ref_sq = 0.0, 0.0, 0.0
    for start in range(0, vocab, _QUANT_CHUNK_ROWS):
        w_RH = weight_VH[start : start + _QUANT_CHUNK_ROWS].detach().to(torch.float32).numpy()
        rows = w_RH.shape[0]
        w_RBK = np.zeros((rows, padded), dtype=np.float32)
        w_RBK[:, :hidden] = w_RH
        w_RBK = w_RBK.reshape(rows, blocks, block_size)
        if symmetric:
            scale_RB = np.abs(w_RBK).max(axis=2) / 7.0
            zp_RB = np.full((rows, blocks), 8.0, dtype=np.float32)
        else:
            lo_RB = np.minimum(w_RBK.min(axis=2), 0.0)
            hi_RB = np.maximum(w_RBK.max(axis=2), 0.0)
            scale_RB = (hi_RB - lo_RB) / 15.0
        scale_RB = np.where(scale_RB == 0.0, 1.0, scale_RB).astype(np.float32)  # all-zero block: any scale is exact
        if not symmetric:
            zp_RB = np.clip(np.round(-lo_RB / scale_RB), 0, 15).astype(np.float32)
        q_RBK = np.clip(np.round(w_RBK / scale_RB[..., None]) + zp_RB[..., None], 0, 15)
        deq_RBK = (q_RBK - zp_RB[..., None]) * scale_RB[..., None]
        diff_RH = (deq_RBK.reshape(rows, padded)[:, :hidden] - w_RH).astype(np.float64)
        max_err = max(max_err, float(np.abs(diff_RH).max(initial=0.0)))
        err_sq += float((diff_RH**2).sum())
        ref_sq += float((w_RH.astype(np.float64) ** 2).sum())
        data[start : start + rows] = _pack_nibbles(q_RBK.reshape(rows, padded).astype(np.uint8))
        scales[start : start + rows] = scale_RB
        if zero_points is not None:
            zp_even = np.zeros((rows, zero_points.shape[1] * 2), dtype=np.uint8)
            zp_even[:, :blocks] = zp_RB.astype(np.uint8)
            zero_points[start : start + rows] = _pack_nibbles(zp_even)
    return QuantizedTable(
        data_VP=data,
        scales_VB=scales,
        zero_points_VZ=zero_points,
        block_size=block_size,
        hidden_size=hidden,
        max_abs_error=max_err,
        rel_rms_error=(err_sq / ref_sq) ** 0.5 if ref_sq else 0.0,
    )


def dequantize_4bit_blockwise(table: QuantizedTable) -> np.ndarray:
    """Float32 [V, H] table that ``table`` encodes (reference for tests)."""
    vocab = table.data_VP.shape[0]
    q_VK = np.empty((vocab, table.data_VP.shape[1] * 2), dtype=np.float32)
    q_VK[:, 0::2] = table.data_VP & 0x0F
    q_VK[:, 1::2] = table.data_VP >> 4
    blocks = table.scales_VB.shape[1]
    if table.zero_points_VZ is None:
        zp_VB = np.full((vocab, blocks), 8.0, dtype=np.float32)
    else:
        zp_all = np.empty((vocab, table.zero_points_VZ.shape[1] * 2), dtype=np.float32)
        zp_all[:, 0::2] = table.zero_points_VZ & 0x0F
        zp_all[:, 1::2] = table.zero_points_VZ >> 4
        zp_VB = zp_all[:, :blocks]
    q_VBK = q_VK.reshape(vocab, blocks, table.block_size)
    deq = (q_VBK - zp_VB[..., None]) * table.scales_VB[..., None].astype(np.float32)
    return deq.reshape(vocab, -1)[:, : table.hidden_size]


def _const(t: ir_tape.Tape, name: str, array: np.ndarray) -> ir.Value:
    return t.initializer(ir.tensor(array, name=name))


def _lookup_float(t: ir_tape.Tape, ids_T: ir.Value, table_VH: np.ndarray) -> ir.Value:
    table = _const(t, "model.embed_tokens.weight", table_VH)
    return t.op("Gather", [table, ids_T], {"axis": 0}, name="/embed_tokens/Gather")


def _lookup_int4(t: ir_tape.Tape, ids_T: ir.Value, q: QuantizedTable, np_dtype: type) -> ir.Value:
    inputs = [
        _const(t, "model.embed_tokens.weight_Q4", q.data_VP),
        ids_T,
        _const(t, "model.embed_tokens.weight_scales", q.scales_VB.astype(np_dtype)),
    ]
    if q.zero_points_VZ is not None:
        inputs.append(_const(t, "model.embed_tokens.weight_zp", q.zero_points_VZ))
    attrs = {"bits": 4, "block_size": q.block_size, "gather_axis": 0, "quantize_axis": 1}
    rows_TP = t.op("GatherBlockQuantized", inputs, attrs, domain="com.microsoft", name="/embed_tokens/GatherBlockQuantized")
    if q.data_VP.shape[1] * 2 == q.hidden_size:
        return rows_TP
    # The table was padded to whole blocks along H; drop the padding columns.
    return t.op(
        "Slice",
        [rows_TP, _const(t, "/const/slice_starts", np.array([0])), _const(t, "/const/slice_ends", np.array([q.hidden_size])),
         _const(t, "/const/slice_axes", np.array([1]))],
        name="/embed_tokens/Slice",
    )


def _build_model(
    table_lookup: Callable[[ir_tape.Tape, ir.Value], ir.Value],
    hidden: int,
    width: int,
    image_token_id: int,
    ir_dtype: ir.DataType,
    np_dtype: type,
) -> ir.Model:
    spec = io_spec.EMBEDDING
    ids_name, feats_name = spec.input_names()
    (out_name,) = spec.output_names()
    ids_BS = ir.Value(name=ids_name, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["batch_size", "sequence_length"]))
    feats_NW = ir.Value(name=feats_name, type=ir.TensorType(ir_dtype), shape=ir.Shape(["num_image_tokens", width]))

    t = ir_tape.Tape()
    ids_T = t.op("Reshape", [ids_BS, _const(t, "/const/flat", np.array([-1]))], name="/input_ids/Flatten")
    text_TH = table_lookup(t, ids_T)
    if width > hidden:
        pads = np.array([0, 0, 0, width - hidden])  # zero DeepStack columns after the H text columns
        text_TW = t.op("Pad", [text_TH, _const(t, "/const/deepstack_pads", pads)], name="/embed_tokens/PadDeepStack")
    else:
        text_TW = text_TH

    is_image_T = t.op("Equal", [ids_T, _const(t, "/const/image_token_id", np.array(image_token_id))], name="/image_mask/Equal")
    is_image_i64_T = t.op("Cast", [is_image_T], {"to": ir.DataType.INT64}, name="/image_mask/Cast")
    # Image token k (0-based, row-major) reads row k + 1 of [0-row ; image_features]; text tokens read row 0.
    count_T = t.op("CumSum", [is_image_i64_T, _const(t, "/const/axis0", np.array(0))], name="/image_mask/CumSum")
    row_T = t.op("Mul", [count_T, is_image_i64_T], name="/image_rows/Mul")
    zero_1W = _const(t, "/const/zero_row", np.zeros((1, width), dtype=np_dtype))
    feats_1NW = t.op("Concat", [zero_1W, feats_NW], {"axis": 0}, name="/image_rows/PrependZero")
    image_TW = t.op("Gather", [feats_1NW, row_T], {"axis": 0}, name="/image_rows/Gather")
    is_image_T1 = t.op("Unsqueeze", [is_image_T, _const(t, "/const/axes1", np.array([1]))], name="/image_mask/Unsqueeze")
    out_TW = t.op("Where", [is_image_T1, image_TW, text_TW], name="/merge/Where")

    shape_BS = t.op("Shape", [ids_BS], name="/output/ShapeBS")
    shape_BSW = t.op("Concat", [shape_BS, _const(t, "/const/width", np.array([width]))], {"axis": 0}, name="/output/ShapeBSW")
    out = ir.Value(name=out_name, type=ir.TensorType(ir_dtype), shape=ir.Shape(["batch_size", "sequence_length", width]))
    t.op("Reshape", [out_TW, shape_BSW], name="/output/Reshape", output=out)

    graph = ir.Graph(
        [ids_BS, feats_NW],
        [out],
        nodes=t.nodes,
        initializers=t.initializers,
        opset_imports={"": OPSET, "com.microsoft": 1},
        name="qwen3_vl_embeddings",
    )
    return ir.Model(graph, ir_version=10, producer_name="builder_qwen3vl")


def export_embeddings(
    embed_weight: torch.Tensor,
    image_token_id: int,
    deepstack_layers: int,
    path: str | Path,
    precision: str = "fp32",
    *,
    io_dtype: str | None = None,
    int4_block_size: int = 32,
    int4_symmetric: bool = True,
) -> EmbeddingsExport:
    """Write embeddings.onnx (+ embeddings.onnx.data) for the [V, H] table ``embed_weight``.

    ``deepstack_layers`` is D: inputs_embeds and image_features are (1 + D) * H wide.
    ``io_dtype`` ("float32"/"float16") must match the decoder's; default: ``default_io_dtype(precision)``.
    """
    if precision not in EMBEDDINGS_PRECISIONS:
        raise ValueError(f"precision: '{precision}' is not one of {', '.join(EMBEDDINGS_PRECISIONS)}")
    io_dtype = io_dtype or default_io_dtype(precision)
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype: '{io_dtype}' is not one of {', '.join(IO_DTYPES)}")
    if embed_weight.dim() != 2:
        raise ValueError(f"embed_weight: expected a [vocab, hidden] table, got shape {list(embed_weight.shape)}")
    if deepstack_layers < 0:
        raise ValueError(f"deepstack_layers: expected >= 0, got {deepstack_layers}")
    vocab, hidden = embed_weight.shape
    if not 0 <= image_token_id < vocab:
        raise ValueError(f"image_token_id: {image_token_id} is outside the vocabulary [0, {vocab})")
    width = (1 + deepstack_layers) * hidden
    ir_dtype, np_dtype = IO_DTYPES[io_dtype]
    path = Path(path)

    q = None
    if precision == "int4":
        q = quantize_4bit_blockwise(embed_weight, int4_block_size, int4_symmetric)
        log.info(
            "embeddings int4 (block %d, %s): max|err| %.3g, relative RMS err %.3g vs the float table",
            int4_block_size, "symmetric" if int4_symmetric else "asymmetric", q.max_abs_error, q.rel_rms_error,
        )

        def lookup(t: ir_tape.Tape, ids_T: ir.Value) -> ir.Value:
            return _lookup_int4(t, ids_T, q, np_dtype)
    else:
        table_dtype = np.float16 if precision == "fp16" else np.float32
        table_VH = embed_weight.detach().to(torch.float32).numpy().astype(table_dtype, copy=False)
        if table_dtype != np_dtype:  # e.g. an fp32 table on a float16 stream
            log.warning("embeddings: %s table on a %s stream; the Gather output is cast", precision, io_dtype)

        def lookup(t: ir_tape.Tape, ids_T: ir.Value) -> ir.Value:
            rows = _lookup_float(t, ids_T, table_VH)
            if table_dtype == np_dtype:
                return rows
            return t.op("Cast", [rows], {"to": ir_dtype}, name="/embed_tokens/Cast")

    model = _build_model(lookup, hidden, width, image_token_id, ir_dtype, np_dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, path, external_data=path.name + ".data")
    log.info("wrote %s (%s, width %d = (1 + %d) x %d)", path, precision, width, deepstack_layers, hidden)
    return EmbeddingsExport(
        path=path,
        precision=precision,
        io_dtype=io_dtype,
        hidden_size=hidden,
        width=width,
        int4_max_abs_error=q.max_abs_error if q else None,
        int4_rel_rms_error=q.rel_rms_error if q else None,
    )
