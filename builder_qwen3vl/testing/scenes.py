"""Public names for shapes_task's drawing, for the research scripts in benchmarks/.

shapes_task.py is part of the training recipe's hash (shipped_model.recipe_hash): renaming its private
``_draw`` would change the hash and force a retrain of the shipped model, so the public name lives here.
"""

from __future__ import annotations

from PIL import ImageDraw

from . import shapes_task


def draw_shape(draw: ImageDraw.ImageDraw, shape: shapes_task.Shape) -> None:
    """Draw one shape exactly as the task's pictures draw it."""
    shapes_task._draw(draw, shape)
