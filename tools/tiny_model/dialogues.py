"""Training pictures with several questions each: one vision pass feeds several supervised answers."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from builder_qwen3vl.shipped.shapes_task import Shape, ask, make_scene


@dataclass(frozen=True)
class Dialogue:
    """One picture with several (kind, question, answer) turns."""

    image: Image.Image
    shapes: tuple[Shape, ...]
    turns: tuple[tuple[str, str, str], ...]


def make_dialogue(seed: int, index: int, turns: int) -> Dialogue:
    """A picture and ``turns`` distinct questions; the first turn is exactly ``make_sample(seed, index)``'s."""
    rng = random.Random(seed * 1_000_003 + index)
    image, shapes = make_scene(rng)
    asked: list[tuple[str, str, str]] = []
    for _ in range(20 * turns):
        qa = ask(rng, shapes)
        if qa[1] not in {q for _, q, _ in asked}:
            asked.append(qa)
        if len(asked) == turns:
            break
    return Dialogue(image, shapes, tuple(asked))
