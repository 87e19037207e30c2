"""The training loop of the tiny shapes model: AdamW on the answer tokens, plus the vision head.

Loss is on the answer tokens and the closing ``<|im_end|>`` only. ``start`` and ``step_batch`` /
``optimise`` are the loop's pieces, shared with the recipe's fingerprint (fingerprint.py), which
replays the first steps: a change here that alters what training does fails that replay.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder_qwen3vl.shipped.shapes_task import QUESTION_KINDS
from builder_qwen3vl.shipped.table import table_sha256
from builder_qwen3vl.ground.tokens import IM_END_ID

from .dialogues import Dialogue, make_dialogue
from .encoding import IGNORE, Encoder, collate
from .model_setup import count_parameters, load_initial_model
from .train_config import TrainConfig
from .vision_head import VisionTokenHead

log = logging.getLogger(__name__)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def answer_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, list[bool]]:
    """(cross-entropy over the full vocabulary where a label exists, teacher-forced right/wrong per answer word).

    Logits are 151,936 wide, so only labelled positions go through lm_head. The right/wrong flags leave out
    the trivial ``<|im_end|>`` targets and follow the batch's answer words in order.
    """
    import torch

    labels = batch.pop("labels")
    hidden_BSH = model.model(**batch).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits_KV = model.lm_head(hidden_BSH[:, :-1][keep])
    wanted_K = targets[keep]
    words = wanted_K != IM_END_ID
    right = (logits_KV[words].argmax(-1) == wanted_K[words]).tolist()
    return torch.nn.functional.cross_entropy(logits_KV, wanted_K), right


def accuracy_text(flags: list[tuple[str, bool]]) -> str:
    """Teacher-forced answer accuracy over some steps: overall and per question kind asked in them."""
    out = [f"all {sum(r for _, r in flags) / len(flags):.3f}" if flags else "all n/a"]
    for kind in QUESTION_KINDS:
        mine = [r for k, r in flags if k == kind]
        out.append(f"{kind} {sum(mine) / len(mine):.3f}" if mine else f"{kind} n/a")
    return " ".join(out)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, then restore the caller's count.

    One thread: the result is then bitwise the same on any machine load, and on a busy 2-core box two
    OpenMP threads were 7x slower than one (12 s vs 1.6 s per step, measured) from oversubscription.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Run:
    """What one optimisation step reads and updates."""

    cfg: TrainConfig
    model: Any
    encoder: Encoder
    head: VisionTokenHead | None
    optimizer: Any
    trainable: list[Any]


@dataclass
class StepResult:
    answer_loss: float
    flags: list[tuple[str, bool]]  # (question kind, answered right) per answer word, teacher forced
    head_loss: float | None = None
    shape_kind_accuracy: float | None = None


def start(folder: Path, cfg: TrainConfig) -> Run:
    """The model of ``folder`` (a checkpoint from model_setup.write_initial_checkpoint) ready for step 0.

    Seeds torch (the vision head's initial weights come from its global generator); call inside
    ``torch_threads(cfg.threads)``.
    """
    import torch

    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    model = load_initial_model(folder, cfg)
    encoder = Encoder(folder, cfg.min_pixels, cfg.max_pixels)
    head = VisionTokenHead(model) if cfg.vision_aux_weight else None
    trainable = [p for p in model.parameters() if p.requires_grad] + (head.parameters() if head else [])
    vision = {id(p) for p in model.model.visual.parameters()}
    groups = [
        {"params": [p for p in trainable if id(p) not in vision], "lr_scale": 1.0},
        {"params": [p for p in trainable if id(p) in vision], "lr_scale": cfg.vision_lr_scale},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    return Run(cfg, model, encoder, head, optimizer, trainable)


def step_batch(run: Run, step: int) -> tuple[list[Dialogue], list[dict[str, Any]], dict[str, Any]]:
    """Step ``step``'s pictures, their prompt examples and the collated batch (labels included)."""
    cfg = run.cfg
    # Several questions per picture: one vision pass feeds cfg.turns supervised answers.
    dialogues = [make_dialogue(cfg.data_seed, step * cfg.batch_size + i, cfg.turns) for i in range(cfg.batch_size)]
    examples, continuations, labels = (list(x) for x in zip(*map(run.encoder.encode_dialogue, dialogues)))
    return dialogues, examples, collate(examples, continuations, labels)


def optimise(run: Run, step: int, dialogues: list[Dialogue], examples: list[dict[str, Any]],
             batch: dict[str, Any]) -> StepResult:
    """One AdamW step on ``batch`` (from step_batch; its labels are consumed)."""
    import torch

    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(step, cfg) * group["lr_scale"]
    loss, right = answer_loss(run.model, batch)
    kinds = [kind for d in dialogues for kind, _, answer in d.turns for _ in run.encoder.ids(answer)]
    if len(kinds) != len(right):
        raise RuntimeError(f"step {step}: {len(right)} answer-word targets but {len(kinds)} answer words asked")
    result = StepResult(loss.item(), list(zip(kinds, right)))
    if run.head is not None:
        head_loss, result.shape_kind_accuracy = run.head.loss(dialogues, examples)
        result.head_loss = head_loss.item()
        loss = loss + cfg.vision_aux_weight * head_loss
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.trainable, cfg.grad_clip)
    run.optimizer.step()
    return result


def _head_average(results: list[StepResult]) -> tuple[float, float]:
    return (sum(r.head_loss for r in results) / len(results),
            sum(r.shape_kind_accuracy for r in results) / len(results))


def train(folder: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Train in ``folder`` (a checkpoint from write_initial_checkpoint), save the result there, return its record."""
    with torch_threads(cfg.threads):
        run = start(folder, cfg)
        params = count_parameters(run.model)
        log.info("parameters: %s", params)
        results: list[StepResult] = []
        begin = time.perf_counter()
        for step in range(cfg.steps):
            results.append(optimise(run, step, *step_batch(run, step)))
            if step % 20 == 0 or step == cfg.steps - 1:
                recent = results[-20:]
                head_text = ""
                if run.head is not None:
                    loss, accuracy = _head_average(recent)
                    head_text = f" | vision head loss {loss:.3f} shape-kind accuracy {accuracy:.3f}"
                log.info("step %d/%d answer loss %.4f answer accuracy (teacher forced) %s%s (%.0f s)", step, cfg.steps,
                         sum(r.answer_loss for r in recent) / len(recent),
                         accuracy_text([f for r in recent for f in r.flags]), head_text, time.perf_counter() - begin)
        seconds = time.perf_counter() - begin
    run.model.eval()
    run.model.save_pretrained(str(folder))
    params["embedding_table_sha256"] = table_sha256(run.model.get_input_embeddings().weight.detach().numpy())
    losses = [r.answer_loss for r in results]
    record = {"parameters": params, "train_seconds": round(seconds, 1), "torch_threads": cfg.threads,
              "answer_losses_every_20": [round(x, 4) for x in losses[::20]],
              "final_answer_loss_avg20": round(sum(losses[-20:]) / len(losses[-20:]), 4),
              "final_answer_accuracy_last100": accuracy_text([f for r in results[-100:] for f in r.flags])}
    if run.head is not None:
        loss, accuracy = _head_average(results[-20:])
        record["final_vision_head_avg20"] = {"loss": round(loss, 4), "shape_kind_accuracy": round(accuracy, 4)}
    return record
