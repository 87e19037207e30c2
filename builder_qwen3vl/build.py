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
from .errors import NotImplementedYet
from .weights import load_tensors
from .options import BuildOptions
from .output_folder import check_output_folder, staged_output

if TYPE_CHECKING:
    from .decoder import DecoderBuild

log = logging.getLogger(__name__)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log one line per build step with its duration."""
    start = time.perf_counter()
    log.info("%s ...", name)
    yield
    log.info("%s done in %.1f s", name, time.perf_counter() - start)


def build(options: BuildOptions) -> Path:
    """Build the bundle described by ``options``; return the output folder."""
    with step("reading checkpoint"):
        ckpt = read_checkpoint(options.input)
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
        write_configs(ckpt, options, out, decoder.genai_config.get("model", {}).get("decoder"))


def write_configs(ckpt: Checkpoint, options: BuildOptions, out: Path, og_decoder: dict | None) -> None:
    cfg = ckpt.config
    genai = genai_config.make_genai_config(cfg, options.execution_provider, og_decoder)
    genai_config.write_json(out / "genai_config.json", genai)
    genai_config.write_json(out / io_spec.PROCESSOR_CONFIG_FILENAME, genai_config.make_processor_config(cfg))
    for path in ckpt.tokenizer_files:
        shutil.copy2(path, out / path.name)


def _build_decoder(ckpt: Checkpoint, options: BuildOptions, out: Path) -> DecoderBuild:
    from .decoder import build_decoder

    return build_decoder(
        ckpt.folder, out, options.precision, options.execution_provider,
        cache_dir=options.cache_dir, extra_options=options.og_extra_options,
        deepstack=options.own_option("deepstack", "true") == "true",
    )


def _export_embeddings(ckpt: Checkpoint, options: BuildOptions, out: Path, io_dtype: str) -> None:
    from .embeddings import export_embeddings

    table = load_tensors(ckpt, ["model.language_model.embed_tokens.weight"])["model.language_model.embed_tokens.weight"]
    export_embeddings(
        table, ckpt.config.tokens.image_token_id, ckpt.config.num_deepstack, out / io_spec.EMBEDDING.filename,
        precision=options.own_option("embeddings_precision", options.precision), io_dtype=io_dtype,
    )


def _export_vision(ckpt: Checkpoint, options: BuildOptions, out: Path, io_dtype: str) -> None:
    raise NotImplementedYet("vision_encoder.onnx: the vision exporter is not implemented yet")
