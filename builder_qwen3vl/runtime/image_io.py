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

Size limit: a file whose header gives more than ``IMAGE_PIXEL_LIMIT`` pixels (100 megapixels) is refused
from the header, before a byte of pixel data is decoded, in one line naming the file, its size and the
limit (``read_image(path, pixel_limit=...)`` overrides it). The processor uses at most 16,777,216 pixels
(4096x4096, the image ``max_pixels``) and downscales anything larger, so the limit costs no answer quality up
to 6x that, and keeps a hostile header from costing gigabytes: reading a picture at the limit peaks at about
0.8 GB (PIL holds RGB as 4 bytes a pixel: the decoded picture and its RGB copy; 0.9 GB for 16-bit grey).
PIL's own check (``Image.MAX_IMAGE_PIXELS``, a process-wide setting the caller owns and this module leaves
alone) is not relied on; its
DecompressionBombError, raised where a format's first header understates the pixels (a GIF frame larger
than its screen, an icon's embedded picture), becomes the same one line. Of a multi-frame file (GIF,
animated WebP, multi-page TIFF) only the first frame is decoded.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..ground.errors import InputError
from ..ground.video_settings import IMAGE_PIXEL_LIMIT

log = logging.getLogger(__name__)

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": how some PIL plugins hand 16-bit grey
READABLE = "PNG, JPEG, BMP, WebP, TIFF or GIF"
_PIL_BOMB = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")


class ImageReadError(InputError, ValueError):
    """A user's image cannot be read: one line naming the file and what was expected (exit code 2).

    A ValueError too, so callers that already turn ValueError into one line (video) need no new clause.
    """


def to_rgb8(img: Image.Image) -> Image.Image:
    """``img`` (already loaded) as 8-bit RGB: HF's ``convert("RGB")``, except 16-bit grey scaled by >> 8."""
    if img.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(img)  # uint16, or int32 for mode "I": clipped and shifted in its own width, no int64 copy
        if grey.dtype.kind != "u":
            grey = np.clip(grey, 0, 65535)
        return Image.fromarray((grey >> 8).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def too_large(path: str | Path, pixels: int, limit: int, what: str = "the image", size: tuple[int, int] | None = None) -> str:
    """The one line for a picture over ``limit`` pixels: the file, its size in pixels and megapixels, the limit."""
    shape = f"{size[0]}x{size[1]} pixels" if size else f"{pixels} pixels"
    return f"{path}: {what} is {shape} ({pixels / 1e6:.1f} megapixels), over the limit of {limit / 1e6:g} megapixels"


def check_pixels(path: str | Path, width: int, height: int, limit: int | None = None, what: str = "the image") -> None:
    """Refuse (ImageReadError, one line) a ``width`` x ``height`` picture over ``limit`` pixels
    (default ``IMAGE_PIXEL_LIMIT``): called with a header's size, before anything is decoded."""
    limit = IMAGE_PIXEL_LIMIT if limit is None else limit
    if width * height > limit:
        raise ImageReadError(too_large(path, width * height, limit, what, (width, height)))


def _bomb_line(path: Path, error: Exception, limit: int) -> str:
    """PIL's DecompressionBombError as ``too_large``'s line (PIL names the pixels, not the sides)."""
    found = _PIL_BOMB.search(str(error))
    if not found:
        return f"{path}: the image is over the limit of {limit / 1e6:g} megapixels ({str(error).splitlines()[0]})"
    pixels, pil_limit = int(found[1]), int(found[2])
    return too_large(path, pixels, limit if pixels > limit else pil_limit)


def header_size(path: str | Path, pixel_limit: int | None = None) -> tuple[int, int] | None:
    """(width, height) from the header of a file PIL recognizes as a picture, else None; nothing is decoded.
    A decompression bomb raises ImageReadError (``read_image``'s line)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.size
    except Image.DecompressionBombError as e:
        raise ImageReadError(_bomb_line(Path(path), e, IMAGE_PIXEL_LIMIT if pixel_limit is None else pixel_limit)) from None
    except (OSError, SyntaxError, ValueError, EOFError):  # not a picture PIL knows (UnidentifiedImageError: OSError)
        return None


def read_image(path: str | Path, pixel_limit: int | None = None) -> Image.Image:
    """Decode ``path`` (its first frame) and return it as an 8-bit RGB PIL image, or raise ImageReadError (one line).

    ``pixel_limit``: the most pixels accepted (default ``IMAGE_PIXEL_LIMIT``), checked on the header before decoding.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, expected an image file")
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    return _read(path, path, pixel_limit)


def read_image_bytes(data: bytes, name: str, pixel_limit: int | None = None) -> Image.Image:
    """``read_image`` for an image file's bytes held in memory (e.g. a request's data: URL); errors start with ``name``."""
    return _read(io.BytesIO(data), name, pixel_limit)


def _read(source: Path | io.BytesIO, name: str | Path, pixel_limit: int | None) -> Image.Image:
    """The decode and its one-line errors, shared by files and bytes."""
    limit = IMAGE_PIXEL_LIMIT if pixel_limit is None else pixel_limit
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: the limit here is IMAGE_PIXEL_LIMIT
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _decode(source, name, limit)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image file (expected {READABLE})") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(_bomb_line(Path(name), e, limit)) from None
    except PermissionError:
        raise ImageReadError(f"{name}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's decoders raise all of these
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageReadError(f"{name}: cannot decode the image ({reason})") from None


def _decode(source: Path | io.BytesIO, name: str | Path, limit: int) -> Image.Image:
    """``read_image``'s work: header checks (size, mode), then the first frame's full decode."""
    with Image.open(source) as img:  # reads the header only
        check_pixels(name, *img.size, limit)
        if img.mode == "F":
            raise ImageReadError(f"{name}: a 32-bit floating-point image; expected 8- or 16-bit pixels")
        frames = getattr(img, "n_frames", 1)  # from headers: PIL skips the frames' data to count them
        if frames > 1:  # GIF, animated WebP, multi-page TIFF: HF's load_image also takes the first frame
            log.warning("%s: %s with %d frames; using the first", name, img.format, frames)
        img.load()  # a full decode now: a truncated file fails here, not later inside og
        check_pixels(name, *img.size, limit)  # a format whose header understated the size (an icon's picture)
        ImageOps.exif_transpose(img, in_place=True)  # HF's rotation, without a copy when there is none to do
        return to_rgb8(img)


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
