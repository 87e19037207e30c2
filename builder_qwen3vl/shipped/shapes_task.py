"""A synthetic visual question-answering task for the tiny trained Qwen3-VL (PIL only, deterministic).

Each picture holds one to three shapes (circle, square, triangle; each kind at most once) in a
few distinct colours, at random positions and sizes on a canvas of 64..160 px per side, so the
processor produces several grids. Questions have one-word answers:

    What colour is the circle?      -> red | green | blue | yellow
    How many shapes are there?      -> one | two | three
    Is the square left of the triangle?  -> yes | no
    Is there a triangle?            -> yes | no

A sample depends only on (seed, index), so training and held-out sets never depend on the order
or number of samples drawn before them. It ships in the wheel because the demo draws its held-out
picture from here; the training recipe's fingerprint (tools/tiny_model/fingerprint.py) covers it
through the first training batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 160, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 200, 0),
}
COUNT_WORDS = ("zero", "one", "two", "three")
MIN_SIDE, MAX_SIDE = 64, 160
QUESTION_KINDS = ("colour", "count", "left_of", "presence")

# Seeds of the standard splits: training draws from TRAIN_SEED, evaluation from HELD_OUT_SEED.
TRAIN_SEED = 1
HELD_OUT_SEED = 20250917


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive, PIL convention)

    @property
    def centre_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    shapes: tuple[Shape, ...]
    question: str
    answer: str
    kind: str  # one of QUESTION_KINDS


def _place_shapes(rng: random.Random, width: int, height: int, kinds: list[str]) -> list[tuple[int, int, int, int]]:
    """Non-overlapping square boxes whose centres are apart horizontally, so 'left of' is never ambiguous."""
    short = min(width, height)
    for attempt in range(300):
        # Shrink the size range after many failures (rare: three large shapes drawn close together).
        scale = (1.0, 0.75, 0.5)[attempt // 100]
        boxes: list[tuple[int, int, int, int]] = []
        for _ in kinds:
            size = max(int(rng.uniform(0.28, 0.45) * short * scale), 18)
            x0 = rng.randint(1, width - size - 2)
            y0 = rng.randint(1, height - size - 2)
            boxes.append((x0, y0, x0 + size, y0 + size))
        if _well_separated(boxes):
            return boxes
    # Last resort: one vertical band per shape, in random order (bands are >= 20 px wide on a 64 px canvas).
    band = (width - 2) // len(kinds)
    size = min(18, band - 4)
    boxes = []
    for slot in rng.sample(range(len(kinds)), len(kinds)):
        x0 = 1 + slot * band + rng.randint(0, max(0, band - size - 3))
        y0 = rng.randint(1, height - size - 2)
        boxes.append((x0, y0, x0 + size, y0 + size))
    if not _well_separated(boxes):
        raise RuntimeError(f"could not place {len(kinds)} shapes on a {width}x{height} canvas")
    return boxes


def _well_separated(boxes: list[tuple[int, int, int, int]]) -> bool:
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap_x = a[0] <= b[2] + 2 and b[0] <= a[2] + 2
            overlap_y = a[1] <= b[3] + 2 and b[1] <= a[3] + 2
            if overlap_x and overlap_y:
                return False
            min_gap = 0.5 * max(a[2] - a[0], b[2] - b[0])
            if abs((a[0] + a[2]) - (b[0] + b[2])) / 2 < min_gap:
                return False
    return True


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    """Draw one shape as the task's pictures draw it (public for the research scripts in benchmarks/)."""
    fill = COLOURS[shape.colour]
    x0, y0, x1, y1 = shape.box
    if shape.kind == "circle":
        draw.ellipse(shape.box, fill=fill)
    elif shape.kind == "square":
        draw.rectangle(shape.box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def make_scene(rng: random.Random) -> tuple[Image.Image, tuple[Shape, ...]]:
    width = rng.randint(MIN_SIDE, MAX_SIDE)
    height = rng.randint(MIN_SIDE, MAX_SIDE)
    kinds = rng.sample(SHAPES, rng.randint(1, 3))
    boxes = _place_shapes(rng, width, height, kinds)
    shapes = tuple(Shape(kind, rng.choice(list(COLOURS)), box) for kind, box in zip(kinds, boxes))
    grey = rng.randint(235, 255)  # a slightly varying light background
    image = Image.new("RGB", (width, height), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        draw_shape(draw, shape)
    return image, shapes


def ask(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str, str]:
    """(kind, question, answer) about the scene; 'left_of' only when two or more shapes are present."""
    kinds = [k for k in QUESTION_KINDS if k != "left_of" or len(shapes) >= 2]
    kind = rng.choice(kinds)
    if kind == "colour":
        shape = rng.choice(shapes)
        return kind, f"What colour is the {shape.kind}?", shape.colour
    if kind == "count":
        return kind, "How many shapes are there?", COUNT_WORDS[len(shapes)]
    if kind == "left_of":
        a, b = rng.sample(list(shapes), 2)
        return kind, f"Is the {a.kind} left of the {b.kind}?", "yes" if a.centre_x < b.centre_x else "no"
    asked = rng.choice(SHAPES)
    present = any(s.kind == asked for s in shapes)
    return kind, f"Is there a {asked}?", "yes" if present else "no"


def make_sample(seed: int, index: int) -> Sample:
    """The ``index``-th sample of the stream ``seed`` (independent of any other sample)."""
    rng = random.Random(seed * 1_000_003 + index)
    image, shapes = make_scene(rng)
    kind, question, answer = ask(rng, shapes)
    return Sample(image, shapes, question, answer, kind)


def make_samples(seed: int, count: int, start: int = 0) -> list[Sample]:
    return [make_sample(seed, start + i) for i in range(count)]
