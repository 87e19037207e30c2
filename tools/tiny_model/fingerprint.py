"""What the training recipe produces in its first steps, recorded with the shipped model and replayed in seconds.

The fingerprint stands in for the recipe: the SHA-256 of the initial weights (after the recipe's own
init, vision head included), of the first batch's tensors (pictures, tokenizer, chat template, labels)
and of the whole learning-rate schedule, and the losses of the first ``STEPS`` optimizer steps at
the real configuration. Any change that alters what training does, in whatever module (the task,
the tokenizer writer, random_init, builder_qwen3vl.ground.tokens, transformers' model code), changes one
of them; moving or re-commenting code does not. The recipe values are compared as well, because
some (``steps``) act only after the replayed steps.

Hashes must match exactly. Losses are float32 reductions whose last bits depend on the summation
order of the CPU's kernels: on one machine with the recorded thread count they are equal; 2 threads
instead of 1 moved them by at most 1.3e-7 relative, AVX2 instead of AVX512 kernels by at most 1.5e-6
over 5 steps (growing to ~1e-5 by step 10, hence few steps). ``RELATIVE_TOLERANCE`` leaves a margin
of ~7x above that, while a recipe change moves the losses after step 0 by far more (tests show one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .model_setup import write_initial_checkpoint
from .train_config import DEFAULT_CONFIG, TrainConfig
from .training import Run, lr_at, optimise, start, step_batch, torch_threads

log = logging.getLogger(__name__)

STEPS = 4  # ~1.6 s each on one core; step 3's loss already reflects three updates
RELATIVE_TOLERANCE = 1e-5
HASHES = ("initial_weights_sha256", "first_batch_sha256", "lr_schedule_sha256")
LOSSES = ("first_answer_losses", "first_vision_head_losses")


def tensors_sha256(named: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of each tensor, in the order given."""
    h = hashlib.sha256()
    for name, tensor in named:
        tensor = tensor.detach().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def lr_schedule_sha256(cfg: TrainConfig) -> str:
    """The learning rate of every step, to 9 significant digits (libm's last bit may differ between machines)."""
    rates = [f"{lr_at(step, cfg):.9g}" for step in range(cfg.steps)]
    return hashlib.sha256(json.dumps(rates).encode()).hexdigest()


def _initial_tensors(run: Run) -> list[tuple[str, Any]]:
    named = list(run.model.state_dict().items())
    if run.head is not None:
        named += [(f"vision_head.{name}", t) for name, t in run.head.linear.state_dict().items()]
    return named


def fingerprint(cfg: TrainConfig = DEFAULT_CONFIG, steps: int = STEPS) -> dict[str, Any]:
    """Run the first ``steps`` steps of ``cfg``'s training from scratch (seconds) and describe them."""
    import torch

    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tiny-fingerprint-") as tmp, torch_threads(cfg.threads):
        run = start(write_initial_checkpoint(Path(tmp), cfg), cfg)
        found: dict[str, Any] = {"steps": steps, "torch_threads": cfg.threads,
                                 "initial_weights_sha256": tensors_sha256(_initial_tensors(run)),
                                 "lr_schedule_sha256": lr_schedule_sha256(cfg)}
        answers, heads = [], []
        for step in range(steps):
            dialogues, examples, batch = step_batch(run, step)
            if step == 0:
                found["first_batch_sha256"] = tensors_sha256(sorted(batch.items()))
            result = optimise(run, step, dialogues, examples, batch)
            answers.append(result.answer_loss)
            heads.append(result.head_loss)
    found.update(first_answer_losses=answers, first_vision_head_losses=heads,
                 cpu_capability=torch.backends.cpu.get_cpu_capability())
    log.info("fingerprint of %d steps in %.1f s", steps, time.perf_counter() - begin)
    return found


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0)


def compare(recorded: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """How ``fresh`` differs from ``recorded`` beyond the tolerance (an empty list when it does not)."""
    problems = [f"{key}: recorded {recorded[key]}, now {fresh[key]}" for key in HASHES if recorded[key] != fresh[key]]
    for key in LOSSES:
        if len(recorded[key]) != len(fresh[key]) or not all(map(_close, recorded[key], fresh[key])):
            problems.append(f"{key}: recorded {recorded[key]}, now {fresh[key]} "
                            f"(relative tolerance {RELATIVE_TOLERANCE})")
    return problems


def replay(record: dict[str, Any], cfg: TrainConfig = DEFAULT_CONFIG) -> list[str]:
    """Differences between a training record (train_record.json) and what ``cfg`` and today's code produce.

    Empty when today's recipe would train the recorded model; otherwise retrain (train_tiny.py --ship).
    """
    problems = []
    values = json.loads(json.dumps(asdict(cfg)))  # tuples as the record's JSON lists
    changed = sorted(k for k in values.keys() | record["config"].keys() if values.get(k) != record["config"].get(k))
    if changed:
        problems.append("recipe values differ from the record: " + ", ".join(
            f"{k} recorded {record['config'].get(k)!r}, now {values.get(k)!r}" for k in changed))
    recorded = record["fingerprint"]
    return problems + compare(recorded, fingerprint(cfg, recorded["steps"]))
