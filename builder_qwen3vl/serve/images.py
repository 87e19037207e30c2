"""A request's pictures: ``data:`` URLs (or, when allowed, http(s) URLs) to bytes, bytes to what og takes.

Decoding goes through ``runtime.image_io.read_image`` (PIL, bounded by the pixel limit before any pixel is
decoded) and is pre-resized as examples/chat.py does (``resize.resize_for_og``), so the server answers as chat.py
does; videos through ``runtime.video`` (``read_frames`` on a file needs PyAV). The readers take paths, so the bytes
are written to a private temporary folder first, and the folder's path is replaced by the request's parameter in
their one-line errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..runtime.image_io import ImageReadError, read_image
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


def _bad(picture: Picture, error: Exception, folder: str) -> Exception:
    message = str(error).replace(f"{folder}/{picture.kind}", picture.param)
    if not message.startswith(picture.param):
        message = f"{picture.param}: {message}"
    return APIError(400, message, picture.param, f"invalid_{picture.kind}")


def decode_image(picture: Picture, resize: dict[str, int]) -> Image.Image:
    """The picture as 8-bit RGB, resized to the grid HF's processor gives it (``resize``: og_run.resize_settings)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image"
        path.write_bytes(picture.data)
        try:
            img = read_image(path)
            smart_resize(img.height, img.width)  # the aspect-ratio limit og would fail on mid-run
        except (ImageReadError, ValueError) as e:
            raise _bad(picture, e, folder) from None
    return resize_for_og(img, **resize)


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
