"""Can the tiny Qwen3-VL learn where a shape is? A short training run on one-shape pictures.

    python benchmarks/one_shape_diagnostic.py --out d0 --steps 300 --threads 2               # d0
    python benchmarks/one_shape_diagnostic.py --out d1 --steps 600 --lr 1e-3 --threads 1     # d1
    python benchmarks/one_shape_diagnostic.py --out d3 --steps 400 --aux 1.0 --threads 1     # d3

Each picture (the shapes task's sizes and colours, one shape, its centre at least 8 % of the width
away from the middle) gets three questions in a shuffled multi-turn chat: "Is the shape in the left
half?", "What colour is the shape?", "What shape is in the picture?". The model, encoder, batching and
lr schedule are tools/tiny_model's (the recipe's other values from train_config); every 20 steps the log
prints the teacher-forced accuracy per question over its last 320 answers and the gradient norms
reaching the vision position table and the patch embedding. ``--aux W`` adds the training-only vision
head (vision_head.VisionTokenHead) with weight W.

docs/trained_model.md quotes d0, d1 and d3 (d1 and d3 were stopped after steps 580 and 280). They ran with 4
decoder layers, the default then; the script pins that. They ran an
earlier copy of this script whose vision-head labels were an inline version of vision_head.token_labels
(same rule, "more than 64 px" instead of ">= 1/16 of the token in 1/255 steps").
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from builder_qwen3vl.shipped import shapes_task as st
from builder_qwen3vl.shipped.shapes_task import draw_shape
from builder_qwen3vl.shipped.table import embedding_table
from builder_qwen3vl.testing.checkpoints import write_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # the training code is not in the wheel
from tiny_model.dialogues import Dialogue  # noqa: E402
from tiny_model.encoding import Encoder, collate  # noqa: E402
from tiny_model.model_setup import model_config, write_preprocessor_config  # noqa: E402
from tiny_model.train_config import DEFAULT_CONFIG  # noqa: E402
from tiny_model.training import answer_loss, lr_at  # noqa: E402
from tiny_model.vision_head import VisionTokenHead  # noqa: E402

log = logging.getLogger("one_shape_diagnostic")
DATA_SEED = 777  # a stream used by neither training nor evaluation


def scene(rng: random.Random) -> tuple[Image.Image, st.Shape]:
    w, h = rng.randint(st.MIN_SIDE, st.MAX_SIDE), rng.randint(st.MIN_SIDE, st.MAX_SIDE)
    kind = rng.choice(st.SHAPES)
    size = max(int(rng.uniform(0.28, 0.45) * min(w, h)), 18)
    while True:  # keep the centre clear of the middle so "left half" is never a near tie
        x0 = rng.randint(1, w - size - 2)
        if abs(x0 + size / 2 - w / 2) > 0.08 * w:
            break
    y0 = rng.randint(1, h - size - 2)
    shape = st.Shape(kind, rng.choice(list(st.COLOURS)), (x0, y0, x0 + size, y0 + size))
    grey = rng.randint(235, 255)
    image = Image.new("RGB", (w, h), (grey, grey, grey))
    draw_shape(ImageDraw.Draw(image), shape)
    return image, shape


def dialogue(index: int) -> Dialogue:
    rng = random.Random(DATA_SEED * 1_000_003 + index)
    image, shape = scene(rng)
    turns = [("half", "Is the shape in the left half?", "yes" if shape.centre_x < image.size[0] / 2 else "no"),
             ("colour", "What colour is the shape?", shape.colour),
             ("name", "What shape is in the picture?", shape.kind)]
    rng.shuffle(turns)
    return Dialogue(image, (shape,), tuple(turns))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="scratch checkpoint folder (replaced)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--pos-std", type=float, default=0.1, help="scale of the vision position table at the start")
    p.add_argument("--aux", type=float, default=0.0, help="weight of the training-only vision head (0: none)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    cfg = dataclasses.replace(DEFAULT_CONFIG, steps=args.steps, vision_pos_embed_std=args.pos_std, learning_rate=args.lr,
                              num_hidden_layers=4)
    shutil.rmtree(args.out, ignore_errors=True)
    write_checkpoint(args.out, model_config(cfg), seed=0)
    write_preprocessor_config(args.out, cfg)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(str(args.out), dtype=torch.float32, attn_implementation="eager")
    table = model.get_input_embeddings().weight
    with torch.no_grad():  # as model_setup.load_initial_model
        table.copy_(torch.from_numpy(embedding_table(*table.shape, cfg.embedding_std, cfg.seed)))
        model.model.visual.pos_embed.weight.mul_(args.pos_std)
    table.requires_grad_(False)
    encoder = Encoder(args.out, cfg.min_pixels, cfg.max_pixels)
    head = VisionTokenHead(model) if args.aux else None
    trainable = [q for q in model.parameters() if q.requires_grad] + (head.parameters() if head else [])
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    pos, patch = model.model.visual.pos_embed.weight, model.model.visual.patch_embed.proj.weight

    history: dict[str, list[bool]] = {}
    start = time.perf_counter()
    for step in range(args.steps):
        dialogues = [dialogue(step * cfg.batch_size + i) for i in range(cfg.batch_size)]
        examples, continuations, labels = (list(x) for x in zip(*map(encoder.encode_dialogue, dialogues)))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss, right = answer_loss(model, collate(examples, continuations, labels))
        for (kind, _, _), ok in zip((t for d in dialogues for t in d.turns), right):
            history.setdefault(kind, []).append(ok)
        head_text = ""
        if head is not None:
            head_loss, kind_accuracy = head.loss(dialogues, examples)
            loss = loss + args.aux * head_loss
            head_text = f" | head loss {head_loss.item():.3f} shape-kind accuracy {kind_accuracy:.3f}"
        optimizer.zero_grad()
        loss.backward()
        grad_pos, grad_patch = pos.grad.norm().item(), patch.grad.norm().item()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        if step % 20 == 19:
            accuracy = {k: round(sum(v[-320:]) / len(v[-320:]), 3) for k, v in history.items()}
            log.info("step %d loss %.3f %s |grad pos| %.2e |grad patch| %.2e%s (%.0f s)", step + 1, loss.item(), accuracy,
                     grad_pos, grad_patch, head_text, time.perf_counter() - start)


if __name__ == "__main__":
    main()
