"""The tiny shapes model's training code: everything the trained weights depend on besides the task
(shapes_task.py), the tokenizer writer, the initial weights (random_init.py) and the recipe values
(train_config.py).

The recipe hash (shipped_model.recipe_hash) covers this file byte for byte: any edit here needs a
retrain (``python -m builder_qwen3vl.testing.train_tiny --ship``), so code that only *uses* the
model (caching, shipping, the CLI) lives elsewhere.

The model is HF's own ``Qwen3VLForConditionalGeneration`` with DeepStack, the real tokenizer and
chat template, and the real 151,936-row tied embedding table. The table is frozen at values from a
stable generator (``embedding_table``): it is most of the parameters, training it would cost more
than the rest of the model, and a fixed random table is still a usable input and output vocabulary
(the decoder learns to point its last hidden state at the answer's row). Loss is on the answer
tokens and the closing ``<|im_end|>`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..tokens import ENDOFTEXT_ID, IM_END_ID, IMAGE_PAD, IMAGE_TAG, IMAGE_TOKEN_ID
from . import shapes_task
from .checkpoints import tiny_config
from .train_config import TrainConfig

log = logging.getLogger(__name__)

PAD_TOKEN_ID = ENDOFTEXT_ID  # as the released generation_config
IGNORE = -100


def model_config(cfg: TrainConfig) -> dict[str, Any]:
    return tiny_config(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.intermediate_size,
        vision_depth=cfg.vision_depth,
        vision_hidden_size=cfg.vision_hidden_size,
        vision_heads=cfg.vision_heads,
        vision_intermediate_size=cfg.vision_intermediate_size,
        deepstack_visual_indexes=cfg.deepstack_visual_indexes,
        num_position_embeddings=cfg.num_position_embeddings,
    )


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(state: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on each 64-bit counter (wrapping uint64 arithmetic)."""
    z = state + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def embedding_table(rows: int, cols: int, std: float, seed: int) -> np.ndarray:
    """A float32 [rows, cols] table, mean 0 and standard deviation ``std``, the same bits on any machine.

    torch's and numpy's normal samplers may change between versions and CPUs (vectorised log/cos), so
    each value is the centred sum of four 24-bit integers from SplitMix64 (Irwin-Hall, close to a
    normal) times one float64 constant: integer arithmetic plus a single IEEE multiply and a cast.
    """
    n = rows * cols
    out = np.empty(n, dtype=np.float32)
    base = np.uint64(seed) * np.uint64(0x100000001B3)
    scale = std * math.sqrt(3.0) / 2.0**24  # each 24-bit term has variance ~2^48/12; four of them 2^48/3
    chunk = 1 << 21
    with np.errstate(over="ignore"):
        for start in range(0, n, chunk):
            index = np.arange(start, min(n, start + chunk), dtype=np.uint64) * np.uint64(4) + base
            total = np.zeros(index.shape, dtype=np.int64)
            for k in range(4):
                total += (_splitmix64(index + np.uint64(k)) >> np.uint64(40)).astype(np.int64)
            out[start:start + len(index)] = ((total - 2 * (2**24 - 1)).astype(np.float64) * scale).astype(np.float32)
    return out.reshape(rows, cols)


def table_sha256(table: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(table, dtype="<f4").tobytes()).hexdigest()


def write_preprocessor_config(folder: Path, cfg: TrainConfig) -> None:
    """The recipe's processor limits in the checkpoint's preprocessor_config.json."""
    path = folder / "preprocessor_config.json"
    pre = json.loads(path.read_text())
    pre["size"] = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    path.write_text(json.dumps(pre, indent=2))


# --------------------------------------------------------------------------- encoding (shared with evaluate)


class Encoder:
    """Chat-template prompts with ``<|image_pad|>`` expanded per grid, and HF PIL image-processor pixels."""

    def __init__(self, checkpoint: Path, min_pixels: int, max_pixels: int) -> None:
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        self.image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, patch_size=16, temporal_patch_size=2,
            merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        )
        self.answer_suffix_ids = self.ids("<|im_end|>")

    @classmethod
    def for_checkpoint(cls, checkpoint: Path) -> Encoder:
        size = json.loads((Path(checkpoint) / "preprocessor_config.json").read_text())["size"]
        return cls(checkpoint, int(size["shortest_edge"]), int(size["longest_edge"]))

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_text(self, question: str) -> str:
        messages = [{"role": "user", "content": IMAGE_TAG + question}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, image: Any, question: str) -> dict[str, Any]:
        """One prompt: input_ids (list), pixel_values [patches, 1536], image_grid_thw [1, 3]."""
        pixels = self.image_processor(images=[image], return_tensors="pt")
        grid = pixels["image_grid_thw"]
        n_tokens = int(grid[0].prod()) // 4  # spatial merge 2x2
        text = self.prompt_text(question).replace(IMAGE_PAD, IMAGE_PAD * n_tokens)
        return {"input_ids": self.ids(text), "pixel_values": pixels["pixel_values"], "image_grid_thw": grid}


    def encode_dialogue(self, dialogue: shapes_task.Dialogue) -> tuple[dict[str, Any], list[int], list[int]]:
        """A multi-turn training sequence: (prompt example, continuation ids, continuation labels).

        The first turn is the single-turn evaluation prompt; each answer and its <|im_end|> are labelled,
        the next user turn is context only. Special tokens split the text, so tokenizing the pieces gives
        the same ids as tokenizing the whole chat-template rendering.
        """
        _, question, answer = dialogue.turns[0]
        example = self.encode(dialogue.image, question)
        ids: list[int] = []
        labels: list[int] = []
        for i, (_, question, answer) in enumerate(dialogue.turns):
            if i:
                turn = self.ids(f"\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
                ids += turn
                labels += [IGNORE] * len(turn)
            target = self.ids(answer) + self.answer_suffix_ids
            ids += target
            labels += target
        return example, ids, labels


def collate(examples: list[dict[str, Any]], answers: list[list[int]] | None = None,
            answer_labels: list[list[int]] | None = None) -> dict[str, Any]:
    """Right-padded batch; with ``answers``, labels cover the answer tokens only (shifted targets)."""
    import torch

    seqs = [e["input_ids"] + (answers[i] if answers else []) for i, e in enumerate(examples)]
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
    labels = torch.full((len(seqs), length), IGNORE, dtype=torch.long)
    for i, seq in enumerate(seqs):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
        if answers:
            start = len(examples[i]["input_ids"])
            labels[i, start: len(seq)] = torch.tensor(answer_labels[i] if answer_labels else answers[i])
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": (input_ids == IMAGE_TOKEN_ID).int(),
        "pixel_values": torch.cat([e["pixel_values"] for e in examples]),
        "image_grid_thw": torch.cat([e["image_grid_thw"] for e in examples]),
    }
    if answers:
        batch["labels"] = labels
    return batch


# --------------------------------------------------------------------------- training


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
    for kind in shapes_task.QUESTION_KINDS:
        mine = [r for k, r in flags if k == kind]
        out.append(f"{kind} {sum(mine) / len(mine):.3f}" if mine else f"{kind} n/a")
    return " ".join(out)


class VisionTokenHead:
    """Training-only dense supervision of the merged vision tokens (the decoder's image inputs).

    Answers alone teach the vision tower slowly: colour is learned first, while which shape a token
    belongs to and where it is stay near chance for thousands of steps (docs/trained_model.md). A linear
    head on the merger output predicts each token's shape kind, colour and x/y centre; it is dropped
    after training, so the saved checkpoint is a plain Qwen3-VL.
    """

    def __init__(self, model: Any) -> None:
        import torch

        hidden = model.config.text_config.hidden_size
        self.linear = torch.nn.Linear(hidden, len(shapes_task.SHAPES) + 1 + len(shapes_task.COLOURS) + 1 + 2)
        self._merged: Any = None
        model.model.visual.merger.register_forward_hook(lambda _m, _i, out: setattr(self, "_merged", out))

    def parameters(self) -> list[Any]:
        return list(self.linear.parameters())

    def loss(self, dialogues: list[shapes_task.Dialogue], examples: list[dict[str, Any]]) -> tuple[Any, float]:
        """(loss on the batch's last vision pass, accuracy of the shape kind on on-shape tokens)."""
        import torch

        kinds: list[int] = []
        colours: list[int] = []
        centres: list[tuple[float, float]] = []
        for dialogue, example in zip(dialogues, examples):
            _, h, w = (int(v) for v in example["image_grid_thw"][0])
            rows, cols = h // 2, w // 2
            k, c = shapes_task.token_labels(dialogue.shapes, dialogue.image.size, (rows, cols))
            kinds += k
            colours += c
            centres += [((col + 0.5) / cols, (row + 0.5) / rows) for row in range(rows) for col in range(cols)]
        kind_T, colour_T, xy_T2 = torch.tensor(kinds), torch.tensor(colours), torch.tensor(centres)
        merged_TH = self._merged
        if merged_TH.shape[0] != len(kinds):
            raise RuntimeError(f"vision head: {merged_TH.shape[0]} merged tokens, {len(kinds)} labels")
        out = self.linear(merged_TH)
        n_kind = len(shapes_task.SHAPES) + 1
        n_colour = len(shapes_task.COLOURS) + 1
        kind_logits, colour_logits = out[:, :n_kind], out[:, n_kind:n_kind + n_colour]
        f = torch.nn.functional
        # x/y in [0, 1] have variance ~1/12: x10 puts their loss on the scale of the two cross-entropies.
        loss = (f.cross_entropy(kind_logits, kind_T) + f.cross_entropy(colour_logits, colour_T)
                + 10 * f.mse_loss(out[:, n_kind + n_colour:], xy_T2))
        on_shape = kind_T > 0
        accuracy = (kind_logits.argmax(-1) == kind_T)[on_shape].float().mean().item()
        return loss, accuracy


def count_parameters(model: Any) -> dict[str, int]:
    table = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "embedding_table": table.numel(), "besides_embedding": total - table.numel(),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def train(folder: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Train in ``folder`` (a checkpoint written by write_checkpoint) and save the result there."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    # One thread: the result is then bitwise the same on any machine load, and on a busy 2-core box two
    # OpenMP threads were 7x slower than one (12 s vs 1.6 s per step, measured) from oversubscription.
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    table = model.get_input_embeddings().weight
    with torch.no_grad():
        # Frozen tied table, so its scale fixes the logit scale: with rows ~N(0, s^2) and the final norm at 1,
        # a random row scores ~N(0, (s*sqrt(H))^2) and a perfectly aligned target s*H. s = 1 (the fixture's)
        # starts at loss ~70; s = 1/sqrt(H) cannot beat 151,936 random rows until the norm weight grows
        # (loss stalled at 2.3); s = 0.3 starts at ~18 and leaves a margin of ~20 nats once aligned.
        # From the stable generator, so the shipped weights can leave the table out (shipped_model.py).
        table.copy_(torch.from_numpy(embedding_table(*table.shape, cfg.embedding_std, cfg.seed)))
        # The fixture's N(0, 1) position table drowns the patch content (~0.5) at the start; ViTs start near 0.02.
        model.model.visual.pos_embed.weight.mul_(cfg.vision_pos_embed_std)
    table.requires_grad_(False)
    model.train()
    params = count_parameters(model)
    log.info("parameters: %s", params)
    encoder = Encoder(folder, cfg.min_pixels, cfg.max_pixels)
    head = VisionTokenHead(model) if cfg.vision_aux_weight else None
    trainable = [p for p in model.parameters() if p.requires_grad] + (head.parameters() if head else [])
    vision = {id(p) for p in model.model.visual.parameters()}
    groups = [
        {"params": [p for p in trainable if id(p) not in vision], "lr_scale": 1.0},
        {"params": [p for p in trainable if id(p) in vision], "lr_scale": cfg.vision_lr_scale},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    losses: list[float] = []  # answer loss only (the vision head's loss is logged beside it)
    flags: list[list[tuple[str, bool]]] = []  # per step: (question kind, answered right) per answer word
    head_log: list[tuple[float, float]] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        # Several questions per picture: one vision pass feeds cfg.turns supervised answers.
        dialogues = [shapes_task.make_dialogue(cfg.data_seed, step * cfg.batch_size + i, cfg.turns)
                     for i in range(cfg.batch_size)]
        examples, continuations, labels = (list(x) for x in zip(*map(encoder.encode_dialogue, dialogues)))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg) * group["lr_scale"]
        loss, right = answer_loss(model, collate(examples, continuations, labels))
        kinds = [kind for d in dialogues for kind, _, answer in d.turns for _ in encoder.ids(answer)]
        if len(kinds) != len(right):
            raise RuntimeError(f"step {step}: {len(right)} answer-word targets but {len(kinds)} answer words asked")
        flags.append(list(zip(kinds, right)))
        losses.append(loss.item())
        if head is not None:
            head_loss, kind_accuracy = head.loss(dialogues, examples)
            head_log.append((head_loss.item(), kind_accuracy))
            loss = loss + cfg.vision_aux_weight * head_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        if step % 20 == 0 or step == cfg.steps - 1:
            recent = losses[-20:]
            head_text = ""
            if head_log:
                tail = head_log[-20:]
                head_text = (f" | vision head loss {sum(x for x, _ in tail) / len(tail):.3f}"
                             f" shape-kind accuracy {sum(a for _, a in tail) / len(tail):.3f}")
            log.info("step %d/%d answer loss %.4f answer accuracy (teacher forced) %s%s (%.0f s)", step, cfg.steps,
                     sum(recent) / len(recent), accuracy_text([f for s in flags[-20:] for f in s]), head_text,
                     time.perf_counter() - start)
    seconds = time.perf_counter() - start

    torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(str(folder))
    params["embedding_table_sha256"] = table_sha256(table.detach().numpy())
    last20 = losses[-20:]
    record = {"parameters": params, "train_seconds": round(seconds, 1), "torch_threads": cfg.threads,
              "answer_losses_every_20": [round(x, 4) for x in losses[::20]],
              "final_answer_loss_avg20": round(sum(last20) / len(last20), 4),
              "final_answer_accuracy_last100": accuracy_text([f for s in flags[-100:] for f in s])}
    if head_log:
        tail = head_log[-20:]
        record["final_vision_head_avg20"] = {"loss": round(sum(x for x, _ in tail) / len(tail), 4),
                                             "shape_kind_accuracy": round(sum(a for _, a in tail) / len(tail), 4)}
    return record
