"""Training-only dense supervision of the merged vision tokens (the decoder's image inputs), and its labels.

Answers alone teach the vision tower slowly: colour is learned first, while which shape a token
belongs to and where it is stay near chance for thousands of steps (docs/trained_model.md). A linear
head on the merger output predicts each token's shape kind, colour and x/y centre; it is dropped
after training, so the saved checkpoint is a plain Qwen3-VL.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw

from builder_qwen3vl.shipped.shapes_task import COLOURS, SHAPES, Shape, draw_shape

from .dialogues import Dialogue

MERGED_PATCH = 32  # pixels per side of one merged vision token (patch 16 x spatial merge 2)


def token_labels(shapes: tuple[Shape, ...], image_size: tuple[int, int], grid_hw: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Per merged vision token, row-major: (shape kind, colour) as 1-based indices into SHAPES / COLOURS, 0 for background.

    ``grid_hw`` is the merged grid (patch grid / 2) of the processed picture, whose pixel size is
    grid * MERGED_PATCH; the shapes are scaled from ``image_size`` to it. A token takes the shape that
    covers most of its pixels if that is at least 1/16 of them (a sliver of an edge stays background).
    """
    rows, cols = grid_hw
    width, height = cols * MERGED_PATCH, rows * MERGED_PATCH
    sx, sy = width / image_size[0], height / image_size[1]
    best = [0] * (rows * cols)
    kinds, colours = [0] * (rows * cols), [0] * (rows * cols)
    for shape in shapes:
        x0, y0, x1, y1 = shape.box
        layer = Image.new("RGB", (width, height), (0, 0, 0))
        draw_shape(ImageDraw.Draw(layer), Shape(shape.kind, shape.colour, (x0 * sx, y0 * sy, x1 * sx, y1 * sy)))
        covered = layer.convert("L").point(lambda v: 255 if v else 0)
        # Share of each token's pixels covered: a box-filter downscale by MERGED_PATCH (in 1/255 steps).
        small = covered.resize((cols, rows), Image.BOX)
        # get_flattened_data replaces getdata (deprecated in Pillow 13); same row-major values.
        shares = small.get_flattened_data() if hasattr(small, "get_flattened_data") else small.getdata()
        for i, share in enumerate(shares):
            pixels = share / 255 * MERGED_PATCH * MERGED_PATCH
            if pixels >= MERGED_PATCH * MERGED_PATCH / 16 and pixels > best[i]:
                best[i] = pixels
                kinds[i] = SHAPES.index(shape.kind) + 1
                colours[i] = list(COLOURS).index(shape.colour) + 1
    return kinds, colours


class VisionTokenHead:
    """A linear head on the merger output: each merged token's shape kind, colour and x/y centre."""

    def __init__(self, model: Any) -> None:
        import torch

        hidden = model.config.text_config.hidden_size
        self.linear = torch.nn.Linear(hidden, len(SHAPES) + 1 + len(COLOURS) + 1 + 2)
        self._merged: Any = None
        model.model.visual.merger.register_forward_hook(lambda _m, _i, out: setattr(self, "_merged", out))

    def parameters(self) -> list[Any]:
        return list(self.linear.parameters())

    def loss(self, dialogues: list[Dialogue], examples: list[dict[str, Any]]) -> tuple[Any, float]:
        """(loss on the batch's last vision pass, accuracy of the shape kind on on-shape tokens)."""
        import torch

        kinds: list[int] = []
        colours: list[int] = []
        centres: list[tuple[float, float]] = []
        for dialogue, example in zip(dialogues, examples):
            _, h, w = (int(v) for v in example["image_grid_thw"][0])
            rows, cols = h // 2, w // 2
            k, c = token_labels(dialogue.shapes, dialogue.image.size, (rows, cols))
            kinds += k
            colours += c
            centres += [((col + 0.5) / cols, (row + 0.5) / rows) for row in range(rows) for col in range(cols)]
        kind_T, colour_T, xy_T2 = torch.tensor(kinds), torch.tensor(colours), torch.tensor(centres)
        merged_TH = self._merged
        if merged_TH.shape[0] != len(kinds):
            raise RuntimeError(f"vision head: {merged_TH.shape[0]} merged tokens, {len(kinds)} labels")
        out = self.linear(merged_TH)
        n_kind = len(SHAPES) + 1
        n_colour = len(COLOURS) + 1
        kind_logits, colour_logits = out[:, :n_kind], out[:, n_kind:n_kind + n_colour]
        f = torch.nn.functional
        # x/y in [0, 1] have variance ~1/12: x10 puts their loss on the scale of the two cross-entropies.
        loss = (f.cross_entropy(kind_logits, kind_T) + f.cross_entropy(colour_logits, colour_T)
                + 10 * f.mse_loss(out[:, n_kind + n_colour:], xy_T2))
        on_shape = kind_T > 0
        accuracy = (kind_logits.argmax(-1) == kind_T)[on_shape].float().mean().item()
        return loss, accuracy
