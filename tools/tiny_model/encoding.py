"""Prompts and pixels as the model sees them, shared by training and the HF side of the evaluation.

Chat-template prompts with ``<|image_pad|>`` expanded per grid, HF's PIL image processor for the
pixels, and right-padded batches whose labels cover the answer tokens and their ``<|im_end|>`` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder_qwen3vl.ground.tokens import ENDOFTEXT_ID, IMAGE_PAD, IMAGE_TAG, IMAGE_TOKEN_ID

from .dialogues import Dialogue

PAD_TOKEN_ID = ENDOFTEXT_ID  # as the released generation_config
IGNORE = -100


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

    def encode_dialogue(self, dialogue: Dialogue) -> tuple[dict[str, Any], list[int], list[int]]:
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
