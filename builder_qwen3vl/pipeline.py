"""``build``: the public entry point. Reads the checkpoint, runs the three exporters and the
config writers into a staging folder, and moves the finished bundle into place."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .bundle import genai_config
from .bundle.disk_estimate import estimate_build_bytes
from .bundle.output_folder import (
    check_free_space,
    check_output_contents,
    check_output_path,
    claimed_output,
    remove_stale_staging,
    staged_output,
)
from .checkpoint.paths import inside_checkpoint
from .checkpoint.reader import Checkpoint, read_checkpoint
from .checkpoint.weights import lm_head_is_table
from .decoder import decoder_step
from .decoder.build import isolates_steps, spills_float_decoder
from .decoder.child_process import run_in_child
from .ground import contract
from .ground.logs import heartbeat, quiet_libraries
from .ground.process_state import preserved_process_state
from .options import BuildOptions
from .plan import BuildPlan, make_plan

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextlib.contextmanager
def step(name: str, beat: bool = True) -> Iterator[None]:
    """Log one line per build step with its duration. ``beat``: "still running" lines while it runs (a step run in a
    child process beats there, beside its own progress lines)."""
    start = time.perf_counter()
    log.info("%s ...", name)
    with heartbeat(name) if beat else contextlib.nullcontext():  # long steps never look hung
        yield
    log.info("%s done in %.1f s", name, time.perf_counter() - start)


def _with_heartbeat(name: str, fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    with heartbeat(name):
        return fn(**kwargs)


def run_step(name: str, fn: Callable[..., T], kwargs: dict[str, Any], *, isolate: bool, verbose: bool) -> T:
    """``fn(**kwargs)`` as build step ``name``: in a child process when ``isolate`` (its memory, torch's and
    onnxruntime's included, goes back to the OS when it ends, so the next step starts from the parent's few
    hundred MB), else here."""
    with step(name, beat=not isolate):
        if not isolate:
            return fn(**kwargs)
        return run_in_child(_with_heartbeat, {"name": name, "fn": fn, "kwargs": kwargs}, verbose=verbose)


def build(options: BuildOptions) -> Path:
    """Build the bundle described by ``options``; return the output folder.

    Other libraries' logs and warnings are shown only with ``options.verbose`` (``logs.quiet_libraries``).
    The calling process is left as it was found: environment, ``sys.path``, logging and warnings
    configuration, umask, working folder, threads (``process_state.preserved_process_state``).
    One build writes a given ``-o`` at a time; a second one fails with ``InputError`` (exit 2) naming the
    first one's pid instead of waiting (``bundle.output_folder.claimed_output``).
    """
    with preserved_process_state():
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
    check_output_path(options.input, options.output)
    with claimed_output(options.output):  # no other build changes -o from here until the bundle is in place
        check_output_contents(options.output, options.overwrite)
        if options.overwrite:
            remove_stale_staging(options.output.resolve())  # before the free-space check: it may hold GBs
        check_free_space(options.output, *estimate_build_bytes(ckpt, plan, spills_float_decoder=spills_float_decoder(ckpt, plan)))
        with staged_output(options.output) as staging, quiet_libraries(options.verbose):
            write_bundle(ckpt, plan, options, staging)
    log.info("bundle written to %s; try: python examples/chat.py -m %s --image IMAGE", options.output, options.output)
    return options.output


def write_bundle(ckpt: Checkpoint, plan: BuildPlan, options: BuildOptions, out: Path) -> None:
    from .embeddings.build import (
        embeddings_step,  # torch: imported when a build runs, not with the package
    )
    from .vision.build import vision_step

    isolate = isolates_steps(ckpt)  # large checkpoints: each heavy step in a child process (memory handed back)
    with step("building model.onnx with the og builder"):
        decoder = decoder_step(ckpt, plan, options, out, isolate=isolate)
    run_step("exporting embeddings.onnx", embeddings_step, {"ckpt": ckpt, "plan": plan, "out": out}, isolate=isolate,
             verbose=options.verbose)
    run_step("exporting vision_encoder.onnx", vision_step, {"ckpt": ckpt, "plan": plan, "out": out}, isolate=isolate,
             verbose=options.verbose)
    with step("writing configs and tokenizer"):
        write_configs(ckpt, plan, out, decoder.og_genai_config)


def write_configs(ckpt: Checkpoint, plan: BuildPlan, out: Path, og_genai: dict | None) -> None:
    genai_config.write_json(out / contract.GENAI_CONFIG_FILENAME, genai_config.make_genai_config(ckpt.config, plan, og_genai))
    genai_config.write_json(out / contract.PROCESSOR_CONFIG_FILENAME, genai_config.make_processor_config(ckpt.config))
    genai_config.write_json(out / contract.VIDEO_CONFIG_FILENAME, genai_config.make_video_config(ckpt.video))
    for path in ckpt.tokenizer_files:
        # the file itself, from where its links lead, which must still be inside the checkpoint folder
        shutil.copy2(inside_checkpoint(ckpt.folder, path), out / path.name)
