"""One image reader for every user path: examples/chat.py (both modes), the video frame folders, your code.

Why not ``og.Images.open(path)``: og 0.18 decodes images itself with libjpeg and libpng only, and on
any other file (BMP, WebP, TIFF, GIF, a text file) libjpeg's default error handler ends the whole
Python process: it prints ``Not a JPEG file: starts with 0x42 0x4d`` and exits 1, with no exception,
no ``finally`` and no atexit. CMYK JPEGs raise ``Unsupported JPEG color space``. So user files are
decoded here with PIL, checked in full, and og is handed PNG bytes we wrote (``og_images``), which
its PNG decoder reads losslessly.

Conversion to 8-bit RGB follows what HF does with an image *file* (``transformers.image_utils.load_image``,
which the Qwen3-VL image processor uses for paths): EXIF orientation applied, then PIL's
``convert("RGB")``: palette expanded, CMYK by PIL's formula, alpha dropped (not composited; og's own
decoder drops it too). One exception: 16-bit images (PIL modes ``I;16*`` / ``I``) are scaled to 8 bits
as ``value >> 8``, as og's decoder does, where PIL's ``convert("RGB")``, and so HF's ``load_image``,
clips every value above 255 to white. No PyTorch here (PIL and numpy only).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

log = logging.getLogger(__name__)

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": how some PIL plugins hand 16-bit grey
READABLE = "PNG, JPEG, BMP, WebP, TIFF or GIF"


class ImageReadError(InputError, ValueError):
    """A user's image cannot be read: one line naming the file and what was expected (exit code 2).

    A ValueError too, so callers that already turn ValueError into one line (video) need no new clause.
    """


def to_rgb8(img: Image.Image) -> Image.Image:
    """``img`` (already loaded) as 8-bit RGB: HF's ``convert("RGB")``, except 16-bit grey scaled by >> 8."""
    if img.mode in SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(img).astype(np.int64), 0, 65535) >> 8
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def read_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return it as an 8-bit RGB PIL image, or raise ImageReadError (one line)."""
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, expected an image file")
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames > 1:  # GIF, animated WebP, multi-page TIFF: HF's load_image also takes the first frame
                log.warning("%s: %s with %d frames; using the first", path, img.format, frames)
            if img.mode == "F":
                raise ImageReadError(f"{path}: a 32-bit floating-point image; expected 8- or 16-bit pixels")
            img.load()  # a full decode now: a truncated file fails here, not later inside og
            return to_rgb8(ImageOps.exif_transpose(img))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (expected {READABLE})") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: {e}") from None
    except PermissionError:
        raise ImageReadError(f"{path}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's decoders raise all of these
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageReadError(f"{path}: cannot decode the image ({reason})") from None


def png_bytes(img: Image.Image) -> bytes:
    """``img`` as PNG bytes for og (lossless; compress_level 1: speed over size, the bytes live in memory)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def og_images(og: Any, images: Sequence[str | Path | Image.Image]) -> Any:
    """og.Images for og's processor: paths are read with ``read_image``, PIL images converted with ``to_rgb8``;
    og only ever decodes PNG bytes written here."""
    rgb = [to_rgb8(img) if isinstance(img, Image.Image) else read_image(img) for img in images]
    return og.Images.open_bytes(*[png_bytes(img) for img in rgb])
