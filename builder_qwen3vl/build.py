"""``build``: the public entry point. Reads the checkpoint, runs the three exporters and the
config writers into a staging folder, and moves the finished bundle into place."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from . import genai_config, io_spec
from .checkpoint import Checkpoint, read_checkpoint
from .decoder import decoder_step
from .decoder.build import spills_float_decoder
from .logs import heartbeat, quiet_libraries
from .options import BuildOptions
from .disk_estimate import estimate_build_bytes
from .output_folder import check_free_space, check_output_folder, staged_output
from .plan import BuildPlan, make_plan
from .weights import EMBED_TABLE, lm_head_is_table, load_prefix, load_tensors

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
    """Build the bundle described by ``options``; return the output folder.

    Other libraries' logs and warnings are shown only with ``options.verbose`` (``logs.quiet_libraries``).
    """
    with quiet_libraries(options.verbose):
        return _build(options)


def _build(options: BuildOptions) -> Path:
    with step("reading checkpoint"):
        ckpt = read_checkpoint(options.input)
    tied = lm_head_is_table(ckpt)  # reads two tensors only when a tied config also stores an lm_head
    if ckpt.config.text.tie_word_embeddings and not tied:
        log.warning("%s: config.json says tie_word_embeddings=true but the weights hold an lm_head.weight that is not "
                    "the embedding table; like HF transformers, the bundle uses the stored lm_head", ckpt.folder)
    plan = make_plan(ckpt.config, options, lm_head_is_table=tied)  # e.g. a bad max_length fails here, before any work
    log.info("build plan: %s", plan)
    check_output_folder(options.input, options.output, options.overwrite)
    check_free_space(options.output, *estimate_build_bytes(ckpt, plan, spills_float_decoder=spills_float_decoder(ckpt, plan)))
    with staged_output(options.output) as staging:
        write_bundle(ckpt, plan, options, staging)
    log.info("bundle written to %s; try: python examples/chat.py -m %s --image IMAGE", options.output, options.output)
    return options.output


def write_bundle(ckpt: Checkpoint, plan: BuildPlan, options: BuildOptions, out: Path) -> None:
    with step("building model.onnx with the og builder"):
        decoder = decoder_step(ckpt, plan, options, out)
    with step("exporting embeddings.onnx"):
        _export_embeddings(ckpt, plan, out)
    with step("exporting vision_encoder.onnx"):
        _export_vision(ckpt, plan, out)
    with step("writing configs and tokenizer"):
        write_configs(ckpt, plan, out, decoder.og_genai_config)


def write_configs(ckpt: Checkpoint, plan: BuildPlan, out: Path, og_genai: dict | None) -> None:
    genai_config.write_json(out / io_spec.GENAI_CONFIG_FILENAME, genai_config.make_genai_config(ckpt.config, plan, og_genai))
    genai_config.write_json(out / io_spec.PROCESSOR_CONFIG_FILENAME, genai_config.make_processor_config(ckpt.config))
    for path in ckpt.tokenizer_files:
        shutil.copy2(path, out / path.name)


def _export_embeddings(ckpt: Checkpoint, plan: BuildPlan, out: Path) -> None:
    from .embeddings import export_embeddings
    from .shared_table import find_shared_int4_table

    table = load_tensors(ckpt, [EMBED_TABLE])[EMBED_TABLE]
    shared = None
    if plan.embeddings_precision == "int4" and plan.lm_head_is_table:
        shared, why = find_shared_int4_table(out / io_spec.DECODER_FILENAME, *table.shape)
        log.info("embeddings int4: %s", f"reading the tied {why}" if shared else f"own table (cannot share: {why})")
    args = (table, ckpt.config.tokens.image_token_id, plan.D, out / io_spec.EMBEDDING.filename)
    kwargs = dict(precision=plan.embeddings_precision, io_dtype=plan.io_dtype)
    if shared is not None:
        try:
            export_embeddings(*args, **kwargs, shared_table=shared)
            return
        except (ValueError, RuntimeError) as e:  # layout or dtype we did not foresee: a second table is still correct
            log.warning("embeddings int4: not sharing the lm_head (%s); writing an own table", e)
    export_embeddings(*args, **kwargs)


def _export_vision(ckpt: Checkpoint, plan: BuildPlan, out: Path) -> None:
    from .vision import export_vision_encoder

    export_vision_encoder(load_hf_visual(ckpt), out / io_spec.VISION.filename, dtype=plan.vision_dtype,
                          weights=plan.vision_weights, width=plan.W)


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
