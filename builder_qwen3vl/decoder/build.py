"""model.onnx: the og model builder's Qwen3-VL text decoder, widened to carry DeepStack features.

``build_decoder`` drives og's builder (``onnxruntime_genai.models.builder``) through the steps of og's
own ``create_model`` (options, io/onnx dtypes, the model class, make_model, save_model, make_genai_config)
with ``DeepStackQwen3VLTextModel`` (model.py) in place of og's ``Qwen3VLTextModel``, or for a MoE checkpoint
(``Qwen3VLMoeForConditionalGeneration``, which og 0.18 has no class for) ``DeepStackQwen3VLMoeTextModel``
(moe_model.py). ``create_model``
itself is not called: it dispatches on the architecture to og's class, and it copies og's own tokenizer
and processor files into the output, which the bundle writes itself. ``decoder_step`` is what the bundle
build calls: the same, in a child process for large checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..ground import contract
from ..ground.errors import InputError
from .child_process import run_in_child
from ..ground.vocab import QWEN3_VL_ARCHITECTURE, QWEN3_VL_MOE_ARCHITECTURE
from ..og_options import given_options_text, og_builder, og_option_strings
from .og_adapter import wheel_commit_stamp
from .og_builder import og_output_to_debug_log
from .repeat_kv_fix import drop_repeat_kv_shape_labels

if TYPE_CHECKING:
    from ..checkpoint.reader import Checkpoint
    from ..options import BuildOptions
    from ..plan import BuildPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderBuild:
    """What the bundle writer needs from the decoder build."""

    path: Path  # model.onnx
    og_genai_config: dict[str, Any]  # the genai_config og's builder made for this graph (not written to the bundle)
    io_dtype: str  # "float32" / "float16" / "bfloat16": dtype of inputs_embeds, logits and the KV cache
    hidden_size: int  # H
    stream_width: int  # (1 + D) * H: inputs_embeds width = decoder.hidden_size in genai_config
    num_deepstack: int  # D
    num_layers: int


def build_decoder(
    input_dir: str | Path,
    output_dir: str | Path,
    precision: str,
    execution_provider: str = "cpu",
    cache_dir: str | Path | None = None,
    extra_options: dict[str, Any] | None = None,
    deepstack: bool = True,
    spill_before_quantizing: bool = False,
    lazy_weights: bool = True,
) -> DecoderBuild:
    """Build model.onnx (+ model.onnx.data) into ``output_dir``.

    ``extra_options`` use og 0.18's names (``block_size``, ``accuracy_level``, ...; BuildOptions translates
    og's deprecated ``int4_*`` aliases). ``deepstack=False`` builds the same wide-input graph without the DeepStack adds
    (a testing aid: parity against HF must then fail). The checkpoint is read a module at a time and int4
    MatMuls are quantized as they are written (model.py); ``lazy_weights=False`` builds as og's own
    ``create_model`` does (whole HF model in memory, whole-model quantizer: the tests' reference).
    ``spill_before_quantizing`` makes the int4 build use og's whole-model quantizer reading a temporary
    float copy of the decoder on disk (inside ``output_dir``, ``spill_to_disk``) instead.
    """
    builder = og_builder()
    options = {"exclude_embeds": "true", **(extra_options or {})}  # the DeepStack class refuses any other value
    input_dir, output_dir = str(input_dir), str(output_dir)
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="og_cache_"))
        cache_dir = str(cache_dir)
        with og_output_to_debug_log():
            try:
                prepared = builder.parse_extra_options(
                    None, input_dir, output_dir, precision, execution_provider, cache_dir, og_option_strings(options)
                )
            except ValueError as e:  # og validates option values here: a user input error
                given = given_options_text(extra_options or {})
                raise InputError(f"og builder rejected the settings: {e} (--extra_options given: {given})") from e
            effective = prepared.pop("_effective_builder_config", None)
            precision = effective.precision if effective is not None else precision
            hf_details = prepared.pop("hf_details")
            config = hf_details["hf_config"]
            architecture = (getattr(config, "architectures", None) or ["?"])[0]
            if architecture not in (QWEN3_VL_ARCHITECTURE, QWEN3_VL_MOE_ARCHITECTURE):
                raise ValueError(f"{input_dir}/config.json: architecture is {architecture}, expected "
                                 f"{QWEN3_VL_ARCHITECTURE} or {QWEN3_VL_MOE_ARCHITECTURE}")
            io_dtype = builder.set_io_dtype(precision, execution_provider, prepared)
            onnx_dtype = builder.set_onnx_dtype(precision, prepared)
            from .model import APPLY_DEEPSTACK, LAZY_WEIGHTS, SPILL_BEFORE_QUANTIZING

            if architecture == QWEN3_VL_MOE_ARCHITECTURE:
                from .moe_model import DeepStackQwen3VLMoeTextModel as model_class
            else:
                from .model import DeepStackQwen3VLTextModel as model_class
            prepared.update({APPLY_DEEPSTACK: deepstack, SPILL_BEFORE_QUANTIZING: spill_before_quantizing,
                             LAZY_WEIGHTS: lazy_weights})
            try:
                model = model_class(config, io_dtype, onnx_dtype, execution_provider, cache_dir, prepared)
            except ValueError as e:  # og converts option values here (e.g. int(block_size)): a user input error
                given = given_options_text(extra_options or {})
                raise InputError(f"og builder rejected the settings: {e} (--extra_options given: {given})") from e
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            model.make_model(input_dir)
            with wheel_commit_stamp():
                model.save_model(output_dir)
            drop_repeat_kv_shape_labels(Path(output_dir) / contract.DECODER_FILENAME)
            # og's genai_config describes the graph it built (io names, session options, KV sharing); the
            # bundle's genai_config.json is written once, by genai_config.py, from it and the plan.
            og_config_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="og_genai_"))
            model.make_genai_config(config, hf_details["extra_kwargs"], og_config_dir)
            genai = json.loads((Path(og_config_dir) / contract.GENAI_CONFIG_FILENAME).read_text())
    build = DecoderBuild(
        path=Path(output_dir) / genai["model"]["decoder"]["filename"],
        og_genai_config=genai,
        io_dtype={"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16"}[model.io_dtype.name],
        hidden_size=model.hidden_size,
        stream_width=model.stream_width,
        num_deepstack=model.num_deepstack,
        num_layers=model.num_layers,
    )
    if build.path.name != contract.DECODER_FILENAME:
        log.warning("decoder written as %s, not %s (extra option filename)", build.path.name, contract.DECODER_FILENAME)
    log.info(
        "decoder %s: %s io, %d layers, inputs_embeds width %d = (1 + %d) x %d, DeepStack %s",
        build.path, build.io_dtype, build.num_layers, build.stream_width, build.num_deepstack, build.hidden_size,
        "on" if deepstack else "OFF",
    )
    return build


# Checkpoints at least this large run each heavy step (decoder, embeddings, vision) in a child process:
# glibc does not give freed memory back to the OS, so in-process each step would stack on top of the
# previous one's peak. Small checkpoints stay in-process, where a child's start-up (re-importing torch and
# og, seconds) would dominate.
ISOLATE_DECODER_BYTES = 1 << 30


def isolates_steps(ckpt: Checkpoint) -> bool:
    """Whether the build of ``ckpt`` runs its heavy steps in child processes (``ISOLATE_DECODER_BYTES``)."""
    return sum(p.stat().st_size for p in {info.file for info in ckpt.tensors.values()}) >= ISOLATE_DECODER_BYTES


def spills_float_decoder(ckpt: Checkpoint, plan: BuildPlan) -> bool:
    """Whether the int4 build saves a float copy of the decoder before quantizing (spill.py), for the disk estimate.

    The default int4 build quantizes each MatMul as it writes it (stream_quant.py). og's whole-model quantizer
    runs for the settings that rewrite does not reproduce; it reads a float copy on disk with its default
    method (``matmul_mixed_precision``, ``use_qdq``), and holds the float model in memory with rtn / k_quant
    (``algo_config``, including the mixed presets), which cannot read that copy (spill.quantizes_from_files)."""
    options = {key: str(value).strip().lower() for key, value in dict(plan.og_extra_options).items()}
    default_method = options.get("algo_config", "default") in ("", "default")
    whole_model = bool(options.get("matmul_mixed_precision")) or options.get("use_qdq", "false") in ("1", "true")
    return plan.precision == "int4" and default_method and whole_model


def decoder_step(ckpt: Checkpoint, plan: BuildPlan, options: BuildOptions, out: Path, *, isolate: bool) -> DecoderBuild:
    """model.onnx for the bundle build, following ``plan``; in a child process when ``isolate``."""
    kwargs = dict(
        input_dir=ckpt.folder, output_dir=out, precision=plan.precision,
        execution_provider=plan.execution_provider, cache_dir=options.cache_dir,
        extra_options=dict(plan.og_extra_options), deepstack=plan.apply_deepstack,
    )
    build = run_in_child(build_decoder, kwargs, verbose=options.verbose) if isolate else build_decoder(**kwargs)
    check_against_plan(build, plan)
    return build


def check_against_plan(build: DecoderBuild, plan: BuildPlan) -> None:
    """The og builder's graph must match the plan the other exporters follow."""
    got = (build.num_deepstack, build.hidden_size, build.stream_width, build.io_dtype, build.num_layers)
    want = (plan.num_deepstack, plan.hidden_size, plan.stream_width, plan.io_dtype, plan.num_layers)
    if got != want:
        raise RuntimeError(f"og builder: decoder has (D, H, W, io dtype, layers) = {got}, the build plan says {want}")
