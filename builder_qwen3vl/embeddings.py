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

int4: the graph is first built with a plain float Gather on the table, then onnxruntime's own
weight-only quantizer (``MatMulNBitsQuantizer``, round-to-nearest, blocks along H) turns that one
node into the ``GatherBlockQuantized`` contrib op, which dequantizes only the gathered rows.

int4 with a tied table (2B, 4B): the decoder's lm_head already holds the same table in int4
(``MatMulNBits``: uint8 [V, H/block, block/2] codes with an implicit zero point of 8, scales
[V, H/block]), which is exactly the layout ``GatherBlockQuantized`` reads with uint8 data. Then
embeddings.onnx quantizes nothing: its two table initializers point into ``model.onnx.data`` at the
lm_head's offsets (og's own ``shared_embeddings`` option wires the same tensors inside one graph;
our decoder excludes the embeddings, so the sharing crosses files). 2B: 195 MB less on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx_ir import tape as ir_tape

from . import io_spec
from .shared_table import SharedInt4Table, shared_lookup

log = logging.getLogger(__name__)

EMBEDDINGS_PRECISIONS = ("fp32", "fp16", "int4")
IO_DTYPES = {"float32": (ir.DataType.FLOAT, np.float32), "float16": (ir.DataType.FLOAT16, np.float16)}
OPSET = 21
EMBED_GATHER_NODE = "/embed_tokens/Gather"  # the only node the int4 quantizer may touch
# The int4 error is measured by running the written graph; above this many table elements only an evenly
# spaced sample of rows is run (2B: 8192 of 151936 rows), which keeps the check to a few seconds.
_ERROR_CHECK_ELEMENTS = 1 << 24
_ERROR_CHECK_OUTPUT_BYTES = 1 << 26  # per session.run: bounds the [1, rows, W] output chunk to 64 MiB
# int4 RTN of a Gaussian table gives ~0.09 relative RMS error; an untied or mis-read table gives ~1.4.
INT4_MAX_REL_RMS = 0.25


@dataclass(frozen=True)
class EmbeddingsExport:
    path: Path
    precision: str
    io_dtype: str  # "float32" or "float16": dtype of image_features and inputs_embeds
    hidden_size: int  # H
    width: int  # (1 + D) * H, the last dim of image_features and inputs_embeds
    int4_max_abs_error: float | None = None  # max |embeddings.onnx text row - float table row| over the rows run
    int4_rel_rms_error: float | None = None  # ||error||_2 / ||float rows||_2 over the same rows
    int4_error_rows: int | None = None  # how many table rows the two figures above cover


def _const(t: ir_tape.Tape, name: str, array: np.ndarray) -> ir.Value:
    return t.initializer(ir.tensor(array, name=name))


def _lookup_float(t: ir_tape.Tape, ids_T: ir.Value, table_VH: np.ndarray) -> ir.Value:
    table = _const(t, "model.embed_tokens.weight", table_VH)
    return t.op("Gather", [table, ids_T], {"axis": 0}, name=EMBED_GATHER_NODE)


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
    # IR 10: the first with INT4 initializers (int4 path) and the last onnxruntime 1.31 loads.
    return ir.Model(graph, ir_version=10, producer_name="builder_qwen3vl")


def _float_table(embed_weight: torch.Tensor, np_dtype: type) -> np.ndarray:
    """[V, H] numpy table in ``np_dtype``; no copy when ``embed_weight`` is already float32 and so is np_dtype."""
    return embed_weight.detach().to(torch.float32).numpy().astype(np_dtype, copy=False)


def _float_lookup(table_VH: np.ndarray, ir_dtype: ir.DataType) -> Callable[[ir_tape.Tape, ir.Value], ir.Value]:
    def lookup(t: ir_tape.Tape, ids_T: ir.Value) -> ir.Value:
        rows = _lookup_float(t, ids_T, table_VH)
        if ir.DataType.from_numpy(table_VH.dtype) == ir_dtype:
            return rows
        return t.op("Cast", [rows], {"to": ir_dtype}, name="/embed_tokens/Cast")

    return lookup


def _check_block_size(block_size: int) -> None:
    # GatherBlockQuantized's own constraint; checked here so the message names our argument.
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size: expected a power of two >= 16, got {block_size}")


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hold a chatty logger at WARNING (the quantizer logs one INFO line per node it skips)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _quantize_table_gather(model: onnx.ModelProto, block_size: int, is_symmetric: bool) -> onnx.ModelProto:
    """Replace the table Gather with onnxruntime's int4 ``GatherBlockQuantized`` (blocks along H).

    Every other node is excluded by name: the image-row Gather reads a Concat output, which the
    quantizer would skip anyway, but naming the one node keeps that from depending on its rules.
    """
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    others = [node.name for node in model.graph.node if node.name != EMBED_GATHER_NODE]
    config = mnq.DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=is_symmetric,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),  # blocks run along H, so one gathered row needs only its own scales
    )
    quantizer = mnq.MatMulNBitsQuantizer(model, nodes_to_exclude=others, algo_config=config)
    # An all-zero block has scale 0; the quantizer handles it (q = 0) after numpy warns about 0 / 0.
    with _quiet(mnq.__name__), np.errstate(divide="ignore", invalid="ignore"):
        quantizer.process()
    quantized = quantizer.model.model
    ops = [node.op_type for node in quantized.graph.node]
    if ops.count("GatherBlockQuantized") != 1 or ops.count("Gather") != 1:
        raise RuntimeError(f"onnxruntime's quantizer: expected 1 GatherBlockQuantized and 1 Gather, got ops {ops}")
    return quantized


def _measure_int4_error(
    path: Path, embed_weight: torch.Tensor, image_token_id: int, width: int, np_dtype: type
) -> tuple[float, float, int]:
    """(max|err|, relative RMS err, rows) of the written graph's text rows vs ``embed_weight``.

    Runs the saved model itself, so the figures cover both the quantizer and onnxruntime's
    dequantization. The image token's own row is left out: the graph never returns it.
    """
    import onnxruntime as ort

    vocab, hidden = embed_weight.shape
    if vocab * hidden <= _ERROR_CHECK_ELEMENTS:
        rows = np.arange(vocab, dtype=np.int64)
    else:
        rows = np.unique(np.linspace(0, vocab - 1, _ERROR_CHECK_ELEMENTS // hidden).round().astype(np.int64))
    rows = rows[rows != image_token_id]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids_name, feats_name = io_spec.EMBEDDING.input_names()
    no_feats = np.zeros((0, width), dtype=np_dtype)
    chunk = max(1, _ERROR_CHECK_OUTPUT_BYTES // (width * np.dtype(np_dtype).itemsize))
    max_err, err_sq, ref_sq = 0.0, 0.0, 0.0
    for start in range(0, len(rows), chunk):
        ids = rows[start : start + chunk]
        (out_1RW,) = session.run(None, {ids_name: ids[None], feats_name: no_feats})
        ref_RH = embed_weight.detach()[torch.from_numpy(ids)].double().numpy()
        diff_RH = out_1RW[0, :, :hidden].astype(np.float64) - ref_RH
        max_err = max(max_err, float(np.abs(diff_RH).max(initial=0.0)))
        err_sq += float((diff_RH**2).sum())
        ref_sq += float((ref_RH**2).sum())
    return max_err, (err_sq / ref_sq) ** 0.5 if ref_sq else 0.0, len(rows)


def export_embeddings(
    embed_weight: torch.Tensor,
    image_token_id: int,
    deepstack_layers: int,
    path: str | Path,
    precision: str = "fp32",
    *,
    io_dtype: str | None = None,
    block_size: int = 32,
    is_symmetric: bool = True,
    shared_table: SharedInt4Table | None = None,
) -> EmbeddingsExport:
    """Write embeddings.onnx (+ embeddings.onnx.data) for the [V, H] table ``embed_weight``.

    ``deepstack_layers`` is D: inputs_embeds and image_features are (1 + D) * H wide.
    ``io_dtype`` ("float32"/"float16") must match the decoder's (the build plan's); default: float16 for an
    fp16 table, else float32.
    ``block_size`` and ``is_symmetric`` (og's names) only apply to int4.
    ``shared_table``: int4 only; read the decoder's tied lm_head in place instead of quantizing
    ``embed_weight`` (which is then only the reference the written graph is checked against).
    """
    if precision not in EMBEDDINGS_PRECISIONS:
        raise ValueError(f"precision: '{precision}' is not one of {', '.join(EMBEDDINGS_PRECISIONS)}")
    io_dtype = io_dtype or ("float16" if precision == "fp16" else "float32")
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype: '{io_dtype}' is not one of {', '.join(IO_DTYPES)}")
    if embed_weight.dim() != 2:
        raise ValueError(f"embed_weight: expected a [vocab, hidden] table, got shape {list(embed_weight.shape)}")
    if deepstack_layers < 0:
        raise ValueError(f"deepstack_layers: expected >= 0, got {deepstack_layers}")
    vocab, hidden = embed_weight.shape
    if not 0 <= image_token_id < vocab:
        raise ValueError(f"image_token_id: {image_token_id} is outside the vocabulary [0, {vocab})")
    if precision == "int4":
        _check_block_size(block_size)
    width = (1 + deepstack_layers) * hidden
    ir_dtype, np_dtype = IO_DTYPES[io_dtype]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    if precision == "int4" and shared_table is not None:
        if (shared_table.vocab, shared_table.hidden) != (vocab, hidden):
            raise ValueError(f"shared_table: lm_head is {shared_table.vocab} x {shared_table.hidden}, table {vocab} x {hidden}")
        if shared_table.scales_dtype != ir_dtype:
            raise ValueError(f"shared_table: lm_head scales are {shared_table.scales_dtype.name}, io dtype is {io_dtype}")
        if path.parent.resolve() != shared_table.folder.resolve():
            raise ValueError(f"shared_table: {path} must be written beside the decoder in {shared_table.folder}")
        block_size, is_symmetric = shared_table.block_size, True
        model = _build_model(shared_lookup(shared_table, path.parent), hidden, width, image_token_id, ir_dtype, np_dtype)
        path.with_name(path.name + ".data").unlink(missing_ok=True)  # a stale own table from an earlier export
    elif precision == "int4":
        # The quantizer works on a ModelProto: build the float graph in the io dtype (so scales and
        # output need no Cast) and let the float model go as soon as it is serialized. Memory: the
        # quantizer holds the table twice (proto bytes + its numpy copy) plus int8 codes; measured peak
        # 3.3 GB above the caller's table for the 2B table (1.24 GB in float32), i.e. ~2.7x.
        proto = ir.to_proto(_build_model(_float_lookup(_float_table(embed_weight, np_dtype), ir_dtype),
                                         hidden, width, image_token_id, ir_dtype, np_dtype))
        start = time.perf_counter()
        proto = _quantize_table_gather(proto, block_size, is_symmetric)
        log.info("embeddings int4: onnxruntime quantizer took %.1f s", time.perf_counter() - start)
        model = ir.from_proto(proto)
        del proto
    else:
        table_dtype = np.float16 if precision == "fp16" else np.float32
        if table_dtype != np_dtype:  # e.g. an fp32 table on a float16 stream
            log.warning("embeddings: %s table on a %s stream; the Gather output is cast", precision, io_dtype)
        lookup = _float_lookup(_float_table(embed_weight, table_dtype), ir_dtype)
        model = _build_model(lookup, hidden, width, image_token_id, ir_dtype, np_dtype)
    # Without an external_data argument onnx_ir keeps ExternalTensors as they are: the shared table stays
    # a reference into the decoder's file.
    ir.save(model, path, external_data=None if shared_table is not None else path.name + ".data")
    del model
    log.info("wrote %s (%s, width %d = (1 + %d) x %d)", path, precision, width, deepstack_layers, hidden)
    export = EmbeddingsExport(path=path, precision=precision, io_dtype=io_dtype, hidden_size=hidden, width=width)
    if precision != "int4":
        return export
    max_err, rel_rms, rows = _measure_int4_error(path, embed_weight, image_token_id, width, np_dtype)
    log.info(
        "embeddings int4 (block %d, %s%s) vs the float table over %d of %d rows: max|err| %.3g, relative RMS err %.3g",
        block_size, "symmetric" if is_symmetric else "asymmetric",
        f", shared with the lm_head in {shared_table.location}" if shared_table else "", rows, vocab, max_err, rel_rms,
    )
    if rel_rms > INT4_MAX_REL_RMS:
        path.unlink()
        if shared_table is not None:
            raise RuntimeError(
                f"{path.name}: the lm_head in {shared_table.location} is not the embedding table in int4 "
                f"(relative RMS error {rel_rms:.3g} > {INT4_MAX_REL_RMS}); is the checkpoint really tied?"
            )
        raise RuntimeError(f"{path.name}: int4 table's relative RMS error {rel_rms:.3g} > {INT4_MAX_REL_RMS} "
                           f"(block {block_size}); onnxruntime's quantizer output is not the table")
    return dataclasses.replace(export, int4_max_abs_error=max_err, int4_rel_rms_error=rel_rms, int4_error_rows=rows)
