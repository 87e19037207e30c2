"""int4 table: onnxruntime's weight-only quantizer on the table Gather, and the error of the written graph."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from ..ground import contract
from .graph import EMBED_GATHER_NODE
from .table import TableRows

# The int4 error is measured by running the written graph; above this many table elements only an evenly
# spaced sample of rows is run (2B: 8192 of 151936 rows), which keeps the check to a few seconds.
_ERROR_CHECK_ELEMENTS = 1 << 24
_ERROR_CHECK_OUTPUT_BYTES = 1 << 26  # per session.run: bounds the [1, rows, W] output chunk to 64 MiB


def check_block_size(block_size: int) -> None:
    # GatherBlockQuantized's own constraint; checked here so the message names our argument.
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size: expected a power of two >= 16, got {block_size}")


class _WarningsAndAbove(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Drop a chatty logger's lines below WARNING while the block runs (the quantizer logs one INFO line per
    node it skips); a filter on that logger, removed afterwards, so its level stays the application's."""
    logger = logging.getLogger(logger_name)
    only_warnings = _WarningsAndAbove()
    logger.addFilter(only_warnings)
    try:
        yield
    finally:
        logger.removeFilter(only_warnings)


def quantize_table_gather(model: onnx.ModelProto, block_size: int, is_symmetric: bool) -> onnx.ModelProto:
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


def measure_int4_error(
    path: Path, table: TableRows, image_token_id: int, stream_width: int, np_dtype: type
) -> tuple[float, float, int]:
    """(max|err|, relative RMS err, rows) of the written graph's text rows vs ``embed_weight``.

    Runs the saved model itself, so the figures cover both the quantizer and onnxruntime's
    dequantization. The image token's own row is left out: the graph never returns it.
    """
    import onnxruntime as ort

    vocab, hidden = table.shape
    if vocab * hidden <= _ERROR_CHECK_ELEMENTS:
        rows = np.arange(vocab, dtype=np.int64)
    else:
        rows = np.unique(np.linspace(0, vocab - 1, _ERROR_CHECK_ELEMENTS // hidden).round().astype(np.int64))
    rows = rows[rows != image_token_id]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids_name, feats_name = contract.EMBEDDING.input_names()
    no_feats = np.zeros((0, stream_width), dtype=np_dtype)
    chunk = max(1, _ERROR_CHECK_OUTPUT_BYTES // (stream_width * np.dtype(np_dtype).itemsize))
    max_err, err_sq, ref_sq = 0.0, 0.0, 0.0
    for start in range(0, len(rows), chunk):
        ids = rows[start : start + chunk]
        (out_1RW,) = session.run(None, {ids_name: ids[None], feats_name: no_feats})
        ref_RH = table.take(ids).double().numpy()
        diff_RH = out_1RW[0, :, :hidden].astype(np.float64) - ref_RH
        max_err = max(max_err, float(np.abs(diff_RH).max(initial=0.0)))
        err_sq += float((diff_RH**2).sum())
        ref_sq += float((ref_RH**2).sum())
    return max_err, (err_sq / ref_sq) ** 0.5 if ref_sq else 0.0, len(rows)
