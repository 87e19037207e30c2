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
from .errors import NotImplementedYet
from .options import BuildOptions
from .output_folder import check_output_folder, staged_output

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
    og_decoder = None
    with step("exporting vision_encoder.onnx"):
        _export_vision(ckpt, options, out)
    with step("exporting embeddings.onnx"):
        _export_embeddings(ckpt, options, out)
    with step("building model.onnx with the og builder"):
        og_decoder = _build_decoder(ckpt, options, out)
    with step("writing configs and tokenizer"):
        write_configs(ckpt, options, out, og_decoder)


def write_configs(ckpt: Checkpoint, options: BuildOptions, out: Path, og_decoder: dict | None) -> None:
    cfg = ckpt.config
    genai_config.write_json(out / "genai_config.json", genai_config.make_genai_config(cfg, options.execution_provider, og_decoder))
    genai_config.write_json(out / io_spec.PROCESSOR_CONFIG_FILENAME, genai_config.make_processor_config(cfg))
    for path in ckpt.tokenizer_files:
        shutil.copy2(path, out / path.name)


def _export_vision(ckpt: Checkpoint, options: BuildOptions, out: Path) -> None:
    raise NotImplementedYet("vision_encoder.onnx: the vision exporter is not implemented yet")


def _export_embeddings(ckpt: Checkpoint, options: BuildOptions, out: Path) -> None:
    raise NotImplementedYet("embeddings.onnx: the embeddings exporter is not implemented yet")


def _build_decoder(ckpt: Checkpoint, options: BuildOptions, out: Path) -> dict | None:
    raise NotImplementedYet("model.onnx: the DeepStack decoder builder is not implemented yet")
