"""Exact-grid helper: pre-resize an image the way HF's Qwen3-VL processor does.

og's C++ smart_resize rounds halves up and truncates before the ceiling when upscaling, where
HF uses Python's round-half-to-even and exact ceilings; for about 6% of small sizes (720x1280
among them: og [1,46,80] vs HF [1,44,80]) the two pick different grids. An image whose sides
are already HF's target sizes passes through og's resize unchanged, so resizing it here first
makes og produce HF's grid exactly. Needs only Pillow (no PyTorch at run time).
"""

from __future__ import annotations

import math

from PIL import Image

MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    *,
    factor: int = 32,
    min_pixels: int = 65536,
    max_pixels: int = 16777216,
) -> tuple[int, int]:
    """HF's target (height, width): multiples of ``factor`` (patch * merge) within the pixel limits."""
    if min(height, width) <= 0:
        raise ValueError(f"image size {width}x{height}: both sides must be positive")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"image size {width}x{height}: aspect ratio above {MAX_ASPECT_RATIO} is not supported")
    h_bar = round(height / factor) * factor  # Python rounds halves to even, as HF does
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def hf_grid(height: int, width: int, *, patch_size: int = 16, merge_size: int = 2,
            min_pixels: int = 65536, max_pixels: int = 16777216) -> tuple[int, int, int]:
    """The image_grid_thw HF computes for one image of this size: (1, h_patches, w_patches)."""
    h, w = smart_resize(height, width, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels)
    return 1, h // patch_size, w // patch_size


def resize_for_og(image: Image.Image, *, patch_size: int = 16, merge_size: int = 2,
                  min_pixels: int = 65536, max_pixels: int = 16777216) -> Image.Image:
    """Return ``image`` resized (bicubic) to HF's target size, so og's processor keeps HF's grid."""
    h, w = smart_resize(image.height, image.width, factor=patch_size * merge_size,
                        min_pixels=min_pixels, max_pixels=max_pixels)
    if (image.height, image.width) == (h, w):
        return image
    return image.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
