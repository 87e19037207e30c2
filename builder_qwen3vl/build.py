"""``build``: the public entry point. Reads the checkpoint, runs the three exporters and the
config writers into a staging folder, and moves the finished bundle into place."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import genai_config, io_spec
from .checkpoint import Checkpoint, read_checkpoint
from .weights import load_prefix, load_tensors
from .options import BuildOptions
from .logs import heartbeat
from .subprocess_step import run_in_child
from .output_folder import check_output_folder, staged_output

if TYPE_CHECKING:
    from .decoder import DecoderBuild

log = logging.getLogger(__name__)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log one line per build step with its duration."""
    start = time.perf_counter()
    log.info("%s ...", name)
    with heartbeat(name):  # long steps (og build + quantization, torch export) log "still running" lines
        yield
    log.info("%s done in %.1f s", name, time.perf_counter() - start)


def build(options: BuildOptions) -> Path:
    """Build the bundle described by ``options``; return the output folder."""
    with step("reading checkpoint"):
        ckpt = read_checkpoint(options.input)
    genai_config.resolve_max_length(options.max_length, ckpt.config)  # a bad max_length fails before any work
    check_output_folder(options.input, options.output, options.overwrite)
    with staged_output(options.output) as staging:
        write_bundle(ckpt, options, staging)
    log.info("bundle written to %s; try: python examples/chat.py -m %s --image IMAGE", options.output, options.output)
    return options.output


def write_bundle(ckpt: Checkpoint, options: BuildOptions, out: Path) -> None:
    with step("building model.onnx with the og builder"):
        decoder = _build_decoder(ckpt, options, out)
    with step("exporting embeddings.onnx"):
        _export_embeddings(ckpt, options, out, decoder.io_dtype)
    with step("exporting vision_encoder.onnx"):
        _export_vision(ckpt, options, out, decoder.io_dtype)
    with step("writing configs and tokenizer"):
        write_configs(ckpt, options, out, decoder.genai_config)


def write_configs(ckpt: Checkpoint, options: BuildOptions, out: Path, og_genai: dict | None) -> None:
    cfg = ckpt.config
    genai = genai_config.make_genai_config(cfg, options.execution_provider, og_genai,
                                           intra_op_num_threads=options.intra_op_num_threads,
                                           max_length=options.max_length)
    genai_config.write_json(out / "genai_config.json", genai)
    genai_config.write_json(out / io_spec.PROCESSOR_CONFIG_FILENAME, genai_config.make_processor_config(cfg))
    for path in ckpt.tokenizer_files:
        shutil.copy2(path, out / path.name)


# Checkpoints at least this large build the decoder in a child process: og's builder keeps the whole
# HF model and its quantized copies (13 GiB at the 2B shape), and glibc does not give that memory back
# to the OS, so in-process the embeddings and vision exports would stack on top of it. Small checkpoints
# stay in-process, where a child's start-up (re-importing torch and og, seconds) would dominate.
ISOLATE_DECODER_BYTES = 1 << 30


def _build_decoder(ckpt: Checkpoint, options: BuildOptions, out: Path) -> DecoderBuild:
    from .decoder import build_decoder

    kwargs = dict(
        input_dir=ckpt.folder, output_dir=out, precision=options.precision,
        execution_provider=options.execution_provider, cache_dir=options.cache_dir,
        extra_options=options.og_extra_options, deepstack=options.own_option("deepstack", "true") == "true",
    )
    large = checkpoint_bytes(ckpt) >= ISOLATE_DECODER_BYTES
    kwargs["spill_before_quantizing"] = large  # 2B int4: 13.1 -> see docs/benchmarks.md
    if not large:
        return build_decoder(**kwargs)
    return run_in_child(build_decoder, kwargs, verbose=options.verbose)


def checkpoint_bytes(ckpt: Checkpoint) -> int:
    return sum(p.stat().st_size for p in {info.file for info in ckpt.tensors.values()})


def _export_embeddings(ckpt: Checkpoint, options: BuildOptions, out: Path, io_dtype: str) -> None:
    from .embeddings import export_embeddings, find_shared_int4_table

    table = load_tensors(ckpt, ["model.language_model.embed_tokens.weight"])["model.language_model.embed_tokens.weight"]
    precision = options.own_option("embeddings_precision", options.precision)
    shared = None
    if precision == "int4" and ckpt.config.text.tie_word_embeddings:
        shared, why = find_shared_int4_table(out / io_spec.DECODER_FILENAME, *table.shape)
        log.info("embeddings int4: %s", f"reading the tied {why}" if shared else f"own table (cannot share: {why})")
    args = (table, ckpt.config.tokens.image_token_id, ckpt.config.num_deepstack, out / io_spec.EMBEDDING.filename)
    if shared is not None:
        try:
            export_embeddings(*args, precision=precision, io_dtype=io_dtype, shared_table=shared)
            return
        except (ValueError, RuntimeError) as e:  # layout or dtype we did not foresee: a second table is still correct
            log.warning("embeddings int4: not sharing the lm_head (%s); writing an own table", e)
    export_embeddings(*args, precision=precision, io_dtype=io_dtype)


# Vision weights for -p int4: onnxruntime's dynamic int8 quantization (s8 per-channel weights, int8 x int8
# kernels), measured at the 2B shape on 2 cores (docs/benchmarks.md): 1.76x / 1.60x HF fp32's patches/s at
# 448x448 / 1000x667, cosine 0.99952 vs HF fp32; int8 MatMulNBits (the former default) ran at 0.83x / 0.97x.
DEFAULT_VISION_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int4": "qint8"}


def _export_vision(ckpt: Checkpoint, options: BuildOptions, out: Path, io_dtype: str) -> None:
    from .vision import export_vision_encoder

    weights = options.own_option("vision_precision", DEFAULT_VISION_PRECISION[options.precision])
    graph_dtype = "fp16" if io_dtype == "float16" else "fp32"
    if graph_dtype == "fp16" and weights == "fp32":
        weights = "fp16"
    export_vision_encoder(load_hf_visual(ckpt), out / io_spec.VISION.filename, dtype=graph_dtype, weights=weights)


def load_hf_visual(ckpt: Checkpoint):
    """HF's own ``Qwen3VLVisionModel`` with the checkpoint's ``model.visual.*`` weights, in fp32."""
    import torch
    from transformers import Qwen3VLConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights

    hf_cfg = Qwen3VLConfig.from_dict(ckpt.raw_config)
    # No random init, and the loaded tensors are adopted (assign=True) instead of copied: the tower then
    # exists once in fp32, not twice (1.6 GB less at 2B). The never-written empty parameters cost no memory.
    with no_init_weights():
        visual = Qwen3VLVisionModel._from_config(hf_cfg.vision_config, attn_implementation="eager", dtype=torch.float32)
    state = {k: v.to(torch.float32) for k, v in load_prefix(ckpt, "model.visual.").items()}
    visual.load_state_dict(state, strict=True, assign=True)
    return visual.eval()
