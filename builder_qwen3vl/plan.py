"""BuildPlan: every choice of one build, resolved once from the checkpoint and the options.

The three exporters and the config writer read the plan instead of deciding for themselves, and each
output is checked against it (the decoder by ``decoder.build``; embeddings and vision take their widths and
dtypes from it). Names as in docs/architecture.md: D DeepStack blocks, H text hidden size, W = (1 + D) * H the
width of ``image_features`` and ``inputs_embeds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .og_options import og_io_dtype
from .ground.errors import InputError
from .ground.vocab import DYNAMIC_FORMATS
from .options import BuildOptions

if TYPE_CHECKING:
    from .checkpoint.config import Qwen3VLConfig

# og sizes the shared KV buffer by search.max_length at every generator: context_length (262,144) would be
# 60 GB of float32 KV for 2B. 8,192 positions: 1.75 GiB for 2B, 2.25 GiB for 4B and 8B (229,376 and 294,912
# bytes per position). A request that needs more sets its own max_length.
DEFAULT_MAX_LENGTH = 8192
# og's own default gives each session hardware_concurrency()/2 threads: one on a 2-core VM without SMT.
DEFAULT_INTRA_OP_NUM_THREADS = 0


@dataclass(frozen=True)
class BuildPlan:
    num_deepstack: int  # D: DeepStack blocks (len(vision_config.deepstack_visual_indexes))
    hidden_size: int  # H: text hidden size
    num_layers: int  # text decoder layers
    precision: str  # decoder weights, og's -p: "fp32" | "fp16" | "int4"
    execution_provider: str
    # Names: element types are numpy's ("float32", "float16"); storage formats and precisions are og's -p names
    # ("fp32", "fp16", "int4", plus the vision formats "int8", "qint8", "quint8").
    io_dtype: str  # "float32" | "float16": inputs_embeds, image_features, logits, KV cache, vision_encoder.onnx (og's rule)
    embeddings_precision: str  # "fp32" | "fp16" | "int4"
    vision_weights: str  # "fp32" | "fp16" | "int8" | "int4" | "qint8" | "quint8"
    lm_head_is_table: bool  # the decoder's int4 lm_head can serve as embeddings.onnx's table (weights.lm_head_is_table)
    og_extra_options: tuple[tuple[str, str], ...]  # what the og builder receives (our defaults for its keys included)
    apply_deepstack: bool  # False only for the parity tests' negative control
    intra_op_num_threads: int  # written into the three session_options (0: every physical core)
    max_length: int  # search.max_length

    @property
    def stream_width(self) -> int:
        """W = (1 + D) * H: the width of image_features and inputs_embeds."""
        return (1 + self.num_deepstack) * self.hidden_size



# -p int4 in an fp32 graph (CPU): dynamic int8 was the fastest measured vision format at the 2B shape
# with cosine 0.9995 to HF fp32 (docs/benchmarks.md has the table). A float16 bundle (og's io dtype for
# int4 on CUDA, DML, WebGPU) cannot run dynamic quantization, so it keeps int8 MatMulNBits.
DEFAULT_WEIGHTS = {"fp32": "fp32", "fp16": "fp16", "int4": "qint8"}
DEFAULT_WEIGHTS_FP16_GRAPH = {"fp32": "fp16", "fp16": "fp16", "int4": "int8"}


def resolve_vision_format(precision: str, io_dtype: str, asked: str | None, where: str) -> str:
    """The weight format of vision_encoder.onnx in a bundle whose io dtype is ``io_dtype`` ("float32" | "float16").

    The graph itself computes in the io dtype (image_features feed embeddings.onnx in that dtype).
    """
    fp16_graph = io_dtype == "float16"
    weights = asked or (DEFAULT_WEIGHTS_FP16_GRAPH if fp16_graph else DEFAULT_WEIGHTS)[precision]
    if fp16_graph and weights in DYNAMIC_FORMATS:
        raise InputError(f"--extra_options vision_precision={weights}: needs a float32 bundle (-p fp32, or -p int4 -e cpu); "
                         f"{where} gives float16")
    if fp16_graph and weights == "fp32":
        weights = "fp16"  # an fp16 graph cannot hold fp32 weights
    return weights


def resolve_max_length(asked: int | None, cfg: Qwen3VLConfig) -> int:
    """search.max_length: ``asked`` (at most the context length), else DEFAULT_MAX_LENGTH capped by it."""
    context = cfg.text.max_position_embeddings
    if asked is None:
        return min(DEFAULT_MAX_LENGTH, context)
    if asked > context:
        raise InputError(f"--extra_options max_length={asked}: more than the checkpoint's context length {context} "
                         "(config.json max_position_embeddings)")
    return asked


def make_plan(cfg: Qwen3VLConfig, options: BuildOptions, *, lm_head_is_table: bool | None = None) -> BuildPlan:
    """Every default and every combination rule of one build; ``lm_head_is_table``: from the weights
    (weights.lm_head_is_table), None: what the config says. Raises InputError before any work."""
    where = f"-p {options.precision} -e {options.execution_provider}"
    try:
        io_dtype = og_io_dtype(options.precision, options.execution_provider, options.og_extra_options)
    except ValueError as e:  # og's normalize_bool on e.g. use_cuda_bf16=maybe
        raise InputError(f"--extra_options: {e}") from e
    if io_dtype == "bfloat16":
        given = " ".join(f"{k}={v}" for k, v in options.extra_options.items() if "bf16" in k) or where
        raise InputError(
            f"--extra_options {given}: bfloat16 inputs/outputs are not supported "
            "(embeddings.onnx and vision_encoder.onnx are float32 or float16); expected use_cuda_bf16=false"
        )
    vision_weights = resolve_vision_format(options.precision, io_dtype, options.vision_precision, where)
    threads = options.intra_op_num_threads
    return BuildPlan(
        num_deepstack=cfg.num_deepstack,
        hidden_size=cfg.text.hidden_size,
        num_layers=cfg.text.num_hidden_layers,
        precision=options.precision,
        execution_provider=options.execution_provider,
        io_dtype=io_dtype,
        embeddings_precision=options.embeddings_precision or options.precision,
        vision_weights=vision_weights,
        lm_head_is_table=cfg.text.tie_word_embeddings if lm_head_is_table is None else lm_head_is_table,
        og_extra_options=tuple(options.og_extra_options.items()),
        apply_deepstack=options.apply_deepstack,
        intra_op_num_threads=DEFAULT_INTRA_OP_NUM_THREADS if threads is None else threads,
        max_length=resolve_max_length(options.max_length, cfg),
    )
