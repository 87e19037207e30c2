"""How much disk a build needs at ``-o``, estimated from the checkpoint's tensor shapes and the plan.

Bytes per weight by format (int4: 4-bit values plus one float32 scale per block of 32, og's CPU default;
int8 formats: one byte plus per-channel scales), counted for the three parts, plus the larger of two
temporary copies that never coexist: the float32 decoder the int4 path writes when onnxruntime's
whole-model quantizer runs (``spill.py``: settings the streaming quantizer does not reproduce,
``decoder.build.spills_float_decoder``) and the vision export's work files. MoE experts count at
og's expert format (QMoE int4 at ``-p int4``, or ``moe_quant_type``), in the bundle and in that copy alike: og packs
them while it makes the graph, before the copy is written. A 10 % margin
covers graph protobufs, norms and configs. It is a check that a build can finish, not a size promise:
the build refuses only when the device has less than this free.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..checkpoint.weights import EMBED_TABLE

if TYPE_CHECKING:
    from ..checkpoint.reader import Checkpoint
    from ..plan import BuildPlan

BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int4": 0.5 + 4 / 32, "int8": 1.0 + 4 / 32, "qint8": 1.0, "quint8": 1.0}
MARGIN = 1.10
VISION_PREFIX = "model.visual."
EXPERT_SUFFIXES = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")
MOE_QUANT_BYTES = {"int4": BYTES_PER_WEIGHT["int4"], "int8": BYTES_PER_WEIGHT["int8"]}  # others (CUDA's): as int8


def expert_bytes_per_weight(plan: BuildPlan) -> float:
    """og's rule: QMoE at ``moe_quant_type`` when given, else int4 at ``-p int4``, else float MoE at the precision."""
    moe = dict(plan.og_extra_options).get("moe_quant_type")
    if moe is None and plan.precision != "int4":
        return BYTES_PER_WEIGHT[plan.precision]
    return MOE_QUANT_BYTES.get(moe or "int4", BYTES_PER_WEIGHT["int8"])


def estimate_build_bytes(ckpt: Checkpoint, plan: BuildPlan, *, spills_float_decoder: bool) -> tuple[int, str]:
    """(bytes, a short description of what they are) for the build of ``ckpt`` under ``plan``."""
    vision = table = decoder = experts = 0
    for name, info in ckpt.tensors.items():
        count = math.prod(info.shape)
        if name.startswith(VISION_PREFIX):
            vision += count
        elif name == EMBED_TABLE:
            table = count
        elif name.endswith(EXPERT_SUFFIXES):
            experts += count
        else:
            decoder += count
    if plan.lm_head_is_table:
        decoder += table  # og writes the tied table as the lm_head
    expert_bytes = experts * expert_bytes_per_weight(plan)
    bundle = (decoder * BYTES_PER_WEIGHT[plan.precision] + expert_bytes + vision * BYTES_PER_WEIGHT[plan.vision_weights]
              + (0 if plan.lm_head_is_table and plan.embeddings_precision == "int4" else
                 table * BYTES_PER_WEIGHT[plan.embeddings_precision]))
    spill = 4.0 * decoder + expert_bytes if spills_float_decoder else 0.0
    # vision/export.py's work folder inside -o: the traced tower in the graph's type, plus onnxruntime's
    # dynamic-quantization output when the format is qint8 / quint8; removed before the next step.
    graph_bytes = 2.0 if plan.io_dtype == "float16" else 4.0
    vision_scratch = vision * (graph_bytes + (1.0 if plan.vision_weights in ("qint8", "quint8") else 0.0))
    scratch = max(spill, vision_scratch)  # the steps run one after the other, each removing its own
    what = f"bundle ~{bundle / 1e9:.2f} GB + " + (f"float32 decoder copy while quantizing ~{spill / 1e9:.2f} GB"
                                                 if spill >= vision_scratch else
                                                 f"vision export work files ~{vision_scratch / 1e9:.2f} GB")
    return int((bundle + scratch) * MARGIN), what
