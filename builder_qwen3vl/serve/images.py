"""A request's pictures: ``data:`` URLs (or, when allowed, http(s) URLs) to bytes, bytes to what og takes.

Pictures are decoded from the request's bytes in memory with the checks of ``runtime.image_io.read_image`` (PIL;
the pixel limit read from the header before any pixel is decoded, a full decode so a truncated file fails here,
EXIF rotation, 8-bit RGB) and pre-resized as examples/chat.py does (``resize.resize_for_og``), so the server answers
as chat.py does. og takes them as uncompressed PNG bytes (``og_png``): og decodes PNG and JPEG only, and a stored
PNG costs a tenth of a compressed one to write, for the same pixels. Videos go through ``runtime.video``, whose
reader (PyAV) takes a path: their bytes are written to a private temporary folder, and the folder's path is
replaced by the request's parameter in the one-line errors.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..runtime.image_io import ImageReadError, read_image_bytes
from ..runtime.resize import resize_for_og, smart_resize
from .errors import APIError

REMOTE_TIMEOUT = 10.0  # seconds for an http(s) picture, when --allow-remote-images


@dataclass(frozen=True)
class Picture:
    """One image or video of a request: its bytes, their SHA-256 (the prompt cache's key) and where it came from."""

    kind: str  # "image" or "video"
    data: bytes
    sha256: str
    param: str  # e.g. messages[0].content[1].image_url.url, for error messages
    ready: bool = False  # data is og_png of the decoded, resized image (``prepare``): og opens it as it is


def read_url(url: str, kind: str, param: str, allow_remote: bool, max_bytes: int) -> Picture:
    """The picture a URL holds. APIError (400) for a URL that is not a base64 ``data:`` URL (or a remote one not
    allowed), broken base64, or a remote picture over ``max_bytes``."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise APIError(400, f"{param}: expected a data: URL with base64 content (data:<type>;base64,...)", param,
                           "invalid_image_url")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, f"{param}: the data: URL's content is not valid base64", param, "invalid_base64") from None
    elif url.startswith(("http://", "https://")):
        if not allow_remote:
            raise APIError(400, f"{param}: remote {kind} URLs are refused; send a data: URL (or start the server "
                           "with --allow-remote-images)", param, "remote_url_refused")
        data = _fetch(url, param, max_bytes)
    else:
        raise APIError(400, f"{param}: expected a data: URL", param, "invalid_image_url")
    if not data:
        raise APIError(400, f"{param}: the {kind} is empty", param, "invalid_image")
    return Picture(kind, data, hashlib.sha256(data).hexdigest(), param)


def _fetch(url: str, param: str, max_bytes: int) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=REMOTE_TIMEOUT) as response:  # http(s) only: checked above
            data = response.read(max_bytes + 1)
    except OSError as e:
        raise APIError(400, f"{param}: cannot fetch the picture ({e})", param, "invalid_image_url") from None
    if len(data) > max_bytes:
        raise APIError(400, f"{param}: the picture is over {max_bytes} bytes", param, "invalid_image")
    return data


def _bad(picture: Picture, error: Exception, folder: str = "") -> APIError:
    message = str(error).replace(f"{folder}/{picture.kind}", picture.param) if folder else str(error)
    if not message.startswith(picture.param):
        message = f"{picture.param}: {message}"
    return APIError(400, message, picture.param, f"invalid_{picture.kind}")


def decode_image(picture: Picture, resize: dict[str, int]) -> Image.Image:
    """The picture as 8-bit RGB, resized to the grid HF's processor gives it (``resize``: og_run.resize_settings)."""
    try:
        img = read_image_bytes(picture.data, picture.param)
        smart_resize(img.height, img.width)  # the aspect-ratio limit og would fail on mid-run
    except ValueError as e:  # ImageReadError is one
        raise _bad(picture, e) from None
    return resize_for_og(img, **resize)


def prepare(pictures: list[Picture], resize: dict[str, int]) -> list[Picture]:
    """Every image decoded, checked and resized here, in the HTTP process (no og needed), its bytes replaced by
    ``og_png``'s: a broken picture is refused before it reaches the og worker, which only opens the PNG. The SHA-256
    stays the request's bytes' (the prompt cache's key). Videos are left to the worker (``runtime.video``)."""
    return [dataclasses.replace(p, data=og_png(decode_image(p, resize)), ready=True) if p.kind == "image" else p
            for p in pictures]


def og_png(img: Image.Image) -> bytes:
    """8-bit RGB ``img`` as a PNG og decodes to the same pixels: stored (zlib level 0), rows unfiltered."""
    width, height = img.size
    rows = np.empty((height, 1 + 3 * width), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = np.asarray(img.convert("RGB")).reshape(height, 3 * width)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 0))
            + chunk(b"IEND", b""))


def decode_video(picture: Picture, bundle: str | Path) -> Any:
    """The video as ``runtime.video.VisualInput``, frames sampled with the bundle's video settings."""
    from ..ground.video_settings import VideoSettings
    from ..runtime.video import preprocess_video, read_frames

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video"
        path.write_bytes(picture.data)
        try:
            frames, fps = read_frames(path)
            return preprocess_video(frames, fps, VideoSettings.from_bundle(bundle))
        except (ImageReadError, ValueError, OSError) as e:
            raise _bad(picture, e, folder) from None
