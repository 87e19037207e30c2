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

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch

from ..ground.logs import Progress
from ..ground.vocab import EMBEDDINGS_PRECISIONS
from .graph import build_model, float_lookup, float_table
from .int4 import check_block_size, measure_int4_error, quantize_table_gather
from .shared_table import SharedInt4Table, shared_lookup
from .table import TableRows

log = logging.getLogger(__name__)

IO_DTYPES = {"float32": (ir.DataType.FLOAT, np.float32), "float16": (ir.DataType.FLOAT16, np.float16)}
# int4 RTN of a Gaussian table gives ~0.09 relative RMS error; an untied or mis-read table gives ~1.4.
INT4_MAX_REL_RMS = 0.25


@dataclass(frozen=True)
class EmbeddingsExport:
    path: Path
    precision: str
    io_dtype: str  # "float32" or "float16": dtype of image_features and inputs_embeds
    hidden_size: int  # H
    stream_width: int  # (1 + D) * H, the last dim of image_features and inputs_embeds
    int4_max_abs_error: float | None = None  # max |embeddings.onnx text row - float table row| over the rows run
    int4_rel_rms_error: float | None = None  # ||error||_2 / ||float rows||_2 over the same rows
    int4_error_rows: int | None = None  # how many table rows the two figures above cover


def export_embeddings(
    embed_weight: torch.Tensor | TableRows,
    image_token_id: int,
    num_deepstack: int,
    path: str | Path,
    precision: str = "fp32",
    *,
    io_dtype: str | None = None,
    block_size: int = 32,
    is_symmetric: bool = True,
    shared_table: SharedInt4Table | None = None,
) -> EmbeddingsExport:
    """Write embeddings.onnx (+ embeddings.onnx.data) for the [V, H] table ``embed_weight``.

    ``embed_weight``: the table in memory, or ``TableRows`` of the checkpoint's (read a block of rows at a time).
    ``num_deepstack`` is D: inputs_embeds and image_features are (1 + D) * H wide.
    ``io_dtype`` ("float32"/"float16") must match the decoder's (the build plan's); default: float16 for an
    fp16 table, else float32.
    ``block_size`` and ``is_symmetric`` (og's names) only apply to int4.
    ``shared_table``: int4 only; read the decoder's tied lm_head in place instead of quantizing
    ``embed_weight`` (which is then only the reference the written graph is checked against).

    Memory: a block of rows (``table.ROWS_PER_BLOCK_BYTES``) at a time; the converted or quantized table goes
    to a temporary file beside ``path`` and from there into embeddings.onnx.data.
    """
    if precision not in EMBEDDINGS_PRECISIONS:
        raise ValueError(f"precision: '{precision}' is not one of {', '.join(EMBEDDINGS_PRECISIONS)}")
    io_dtype = io_dtype or ("float16" if precision == "fp16" else "float32")
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype: '{io_dtype}' is not one of {', '.join(IO_DTYPES)}")
    if embed_weight.dim() != 2:
        raise ValueError(f"embed_weight: expected a [vocab, hidden] table, got shape {list(embed_weight.shape)}")
    table = embed_weight if isinstance(embed_weight, TableRows) else TableRows.of_tensor(embed_weight)
    if num_deepstack < 0:
        raise ValueError(f"num_deepstack: expected >= 0, got {num_deepstack}")
    vocab, hidden = table.shape
    if not 0 <= image_token_id < vocab:
        raise ValueError(f"image_token_id: {image_token_id} is outside the vocabulary [0, {vocab})")
    if precision == "int4":
        check_block_size(block_size)
    stream_width = (1 + num_deepstack) * hidden
    ir_dtype, np_dtype = IO_DTYPES[io_dtype]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".embeddings-export-") as work:
        if precision == "int4" and shared_table is not None:
            if (shared_table.vocab, shared_table.hidden) != (vocab, hidden):
                raise ValueError(f"shared_table: lm_head is {shared_table.vocab} x {shared_table.hidden}, table {vocab} x {hidden}")
            if shared_table.scales_dtype != ir_dtype:
                raise ValueError(f"shared_table: lm_head scales are {shared_table.scales_dtype.name}, io dtype is {io_dtype}")
            if path.parent.resolve() != shared_table.folder.resolve():
                raise ValueError(f"shared_table: {path} must be written beside the decoder in {shared_table.folder}")
            block_size, is_symmetric = shared_table.block_size, True
            model = build_model(shared_lookup(shared_table, path.parent), hidden, stream_width, image_token_id, ir_dtype, np_dtype)
            path.with_name(path.name + ".data").unlink(missing_ok=True)  # a stale own table from an earlier export
        elif precision == "int4":
            model = _int4_model(table, block_size, is_symmetric, stream_width, image_token_id, ir_dtype, np_dtype, Path(work))
        else:
            table_dtype = np.float16 if precision == "fp16" else np.float32
            if table_dtype != np_dtype:  # e.g. an fp32 table on a float16 stream
                log.warning("embeddings: %s table on a %s stream; the Gather output is cast", precision, io_dtype)
            stand_in = np.zeros((2, hidden), table_dtype)  # the graph for a 2-row table; the real one replaces it
            model = build_model(float_lookup(stand_in, ir_dtype), hidden, stream_width, image_token_id, ir_dtype, np_dtype)
            progress = Progress(f"embeddings: writing the {precision} table", vocab, "rows", logger=log)
            _replace(model, TABLE_NAME, _write_blocks(table, Path(work), progress,
                                                      lambda rows: float_table(rows, table_dtype)), (vocab, hidden))
        # Without an external_data argument onnx_ir keeps ExternalTensors as they are: the shared table stays
        # a reference into the decoder's file. Otherwise the table is copied from the work folder (in the kernel).
        ir.save(model, path, external_data=None if shared_table is not None else path.name + ".data")
        del model
    log.info("wrote %s (%s, width %d = (1 + %d) x %d)", path, precision, stream_width, num_deepstack, hidden)
    export = EmbeddingsExport(path=path, precision=precision, io_dtype=io_dtype, hidden_size=hidden, stream_width=stream_width)
    if precision != "int4":
        return export
    max_err, rel_rms, rows = measure_int4_error(path, table, image_token_id, stream_width, np_dtype)
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


def _int4_model(table: TableRows, block_size: int, is_symmetric: bool, stream_width: int, image_token_id: int,
                ir_dtype: ir.DataType, np_dtype: type, work: Path) -> ir.Model:
    """The int4 graph: onnxruntime's quantizer turns the float graph of a 2-row stand-in table into the
    GatherBlockQuantized graph (names, attributes), then the real table's codes, scales (and zero points),
    quantized block of rows by block of rows with the quantizer's own ``quantize_ndarray``, replace the
    stand-in's. Blocks run along H, so each row is quantized on its own and the blocks' results put end to
    end are the whole table's (the row blocks hold an even number of rows: 4-bit codes start on a byte)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantizer,
    )

    vocab, hidden = table.shape
    stand_in = np.zeros((2, hidden), np_dtype)
    proto = ir.to_proto(build_model(float_lookup(stand_in, ir_dtype), hidden, stream_width, image_token_id, ir_dtype, np_dtype))
    model = ir.from_proto(quantize_table_gather(proto, block_size, is_symmetric))
    names = [TABLE_NAME + "_Q4", TABLE_NAME + "_scales"] + ([] if is_symmetric else [TABLE_NAME + "_zero_points"])
    k_blocks = (hidden + block_size - 1) // block_size
    shapes = [(vocab, hidden), (vocab, k_blocks), (vocab, k_blocks)]
    files = [open(work / f"table{i}.bin", "wb") for i in range(len(names))]  # noqa: SIM115 - closed below
    progress = Progress("embeddings: quantizing the table (int4)", vocab, "rows", logger=log)
    start = time.perf_counter()
    try:
        for first, stop in table.blocks():
            rows = float_table(table.rows(first, stop), np_dtype)
            codes, scales, zero_points = DefaultWeightOnlyQuantizer.quantize_ndarray(rows, 1, block_size, is_symmetric)
            for f, part in zip(files, (codes, scales, zero_points)):
                f.write(np.ascontiguousarray(part).tobytes())
            progress.update(stop - first)
    finally:
        for f in files:
            f.close()
    log.info("embeddings int4: onnxruntime quantizer took %.1f s", time.perf_counter() - start)
    for i, (name, shape) in enumerate(zip(names, shapes)):
        _replace(model, name, work / f"table{i}.bin", shape)
    return model


TABLE_NAME = "model.embed_tokens.weight"


def _write_blocks(table: TableRows, work: Path, progress: Progress, convert) -> Path:
    out = work / "table.bin"
    with open(out, "wb") as f:
        for first, stop in table.blocks():
            f.write(np.ascontiguousarray(convert(table.rows(first, stop))).tobytes())
            progress.update(stop - first)
    return out


def _replace(model: ir.Model, name: str, file: Path, shape: tuple[int, ...]) -> None:
    """Point initializer ``name`` (a stand-in's) at the tensor of ``shape`` in ``file`` (same dtype)."""
    value = model.graph.initializers[name]
    stand_in = value.const_value
    value.const_value = ir.ExternalTensor(file.name, 0, file.stat().st_size, stand_in.dtype, shape=ir.Shape(shape),
                                          name=stand_in.name, base_dir=file.parent)
    if value.const_value.nbytes != file.stat().st_size:
        raise RuntimeError(f"embeddings: {name} is {file.stat().st_size} bytes, {stand_in.dtype.name} {list(shape)} "
                           f"needs {value.const_value.nbytes}")
    value.shape = ir.Shape(shape)
