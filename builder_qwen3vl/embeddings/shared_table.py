"""The decoder's tied int4 lm_head, read in place by embeddings.onnx (no second copy of the table).

The lm_head is a ``MatMulNBits`` with uint8 [V, H/block, block/2] codes, an implicit zero point of 8
and scales [V, H/block]: exactly what ``GatherBlockQuantized`` reads. embeddings.onnx's two table
initializers then point into ``model.onnx.data`` at the lm_head's offsets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir import tape as ir_tape


@dataclass(frozen=True)
class SharedInt4Table:
    """Where the decoder's tied int4 lm_head lives, for embeddings.onnx to read in place."""

    folder: Path  # the bundle folder holding the decoder; embeddings.onnx must be written there too
    location: str  # external-data file name, relative to ``folder`` (model.onnx.data)
    weight_offset: int  # uint8 codes, V x H/2 bytes
    weight_length: int
    scales_offset: int  # V x H/block scales in the io dtype
    scales_length: int
    scales_dtype: ir.DataType
    vocab: int
    hidden: int
    block_size: int


def find_shared_int4_table(decoder_path: Path, vocab: int, hidden: int) -> tuple[SharedInt4Table | None, str]:
    """The lm_head's int4 tensors in ``decoder_path`` if embeddings.onnx can read them, else (None, why not).

    Only the layout is checked here (a symmetric 4-bit MatMulNBits of shape V x H without padding,
    stored as external data); that the table is tied is the caller's knowledge, and the written
    embeddings graph is run against the float table afterwards in any case.
    """
    model = onnx.load(str(decoder_path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    heads = [n for n in model.graph.node if n.op_type == "MatMulNBits"
             and {a.name: a.i for a in n.attribute}.get("N") == vocab]
    if len(heads) != 1:
        return None, f"expected one MatMulNBits with N = {vocab} (the lm_head), found {len(heads)}"
    node = heads[0]
    attrs = {a.name: a.i for a in node.attribute}
    if attrs.get("bits") != 4 or attrs.get("K") != hidden:
        return None, f"lm_head {node.name} has bits={attrs.get('bits')} K={attrs.get('K')}, expected 4 and {hidden}"
    block = attrs.get("block_size", 0)
    if len(node.input) > 3 and any(node.input[3:]):
        return None, f"lm_head {node.name} has zero points or g_idx inputs"
    if "weight_prepacked" in attrs:  # og's CUDA fpA_intB layout: same bytes, another order
        return None, f"lm_head {node.name} weights are prepacked for CUDA"
    if block < 16 or hidden % block:
        return None, f"lm_head block size {block} does not divide hidden size {hidden}"
    weight, scales = inits.get(node.input[1]), inits.get(node.input[2])
    if weight is None or scales is None:
        return None, f"lm_head {node.name} weights are not initializers"
    expected = {weight.name: [vocab, hidden // block, block // 2], scales.name: [vocab, hidden // block]}
    located = {}
    for tensor in (weight, scales):
        info = {e.key: e.value for e in tensor.external_data}
        if tensor.data_location != onnx.TensorProto.EXTERNAL or "location" not in info:
            return None, f"{tensor.name} is not stored as external data"
        if list(tensor.dims) != expected[tensor.name]:
            return None, f"{tensor.name} has shape {list(tensor.dims)}, expected {expected[tensor.name]}"
        located[tensor.name] = (info["location"], int(info.get("offset", 0)), int(info["length"]))
    if weight.data_type != onnx.TensorProto.UINT8 or located[weight.name][0] != located[scales.name][0]:
        return None, f"{weight.name} is not uint8 or its scales are in another file"
    location = located[weight.name][0]
    if Path(location).name != location:
        return None, f"external data location {location!r} is not a file in the bundle folder"
    return SharedInt4Table(
        folder=Path(decoder_path).parent, location=location, weight_offset=located[weight.name][1], weight_length=located[weight.name][2],
        scales_offset=located[scales.name][1], scales_length=located[scales.name][2],
        scales_dtype=ir.DataType(scales.data_type), vocab=vocab, hidden=hidden, block_size=block,
    ), f"lm_head {node.name} (block {block})"


def shared_lookup(table: SharedInt4Table, base_dir: Path) -> Callable[[ir_tape.Tape, ir.Value], ir.Value]:
    def lookup(t: ir_tape.Tape, ids_T: ir.Value) -> ir.Value:
        codes = ir.ExternalTensor(
            table.location, table.weight_offset, table.weight_length, ir.DataType.UINT8,
            shape=ir.Shape([table.vocab, table.hidden // 2]), name="lm_head.MatMul.weight_Q4", base_dir=base_dir,
        )
        scales = ir.ExternalTensor(
            table.location, table.scales_offset, table.scales_length, table.scales_dtype,
            shape=ir.Shape([table.vocab, table.hidden // table.block_size]), name="lm_head.MatMul.weight_scales",
            base_dir=base_dir,
        )
        # uint8 codes without zero points: GatherBlockQuantized subtracts 8, as MatMulNBits does.
        return t.op(
            "GatherBlockQuantized", [t.initializer(codes), ids_T, t.initializer(scales)],
            {"bits": 4, "block_size": table.block_size, "gather_axis": 0, "quantize_axis": 1},
            domain="com.microsoft", name="/embed_tokens/GatherBlockQuantized",
        )

    return lookup
