"""Reading a video's frames from a file (PyAV) or a folder of pictures, sampled before decoding.

``read_frames`` returns the frames lazily: ``video.preprocess_video`` reads only the frames HF's sampling picks
(``video_sampling.py``), so memory follows the sampled frames, not the file's length; a frame's size and the
frame count are checked against the limits (``ground/video_settings.py``) from the header first.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..ground.video_settings import IMAGE_PIXEL_LIMIT, MAX_VIDEO_FRAMES, VideoSettings
from .image_io import check_pixels, header_size, read_image
from .video_sampling import sample_indices, video_smart_resize

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

log = logging.getLogger(__name__)


def _read_resized(pairs: Iterable[tuple[int, Image.Image]], num_frames: int,
                  settings: VideoSettings) -> tuple[dict[int, Image.Image], tuple[int, int]]:
    """Frames by index, each resized (RGB, bicubic) as it arrives to the (height, width) ``video_smart_resize``
    gives ``num_frames`` frames of the first one's size. ``_normalize``'s own resize then keeps them as they are
    (PIL copies an image resized to its own size), so the pixels equal those of resizing every frame at the end."""
    kept: dict[int, Image.Image] = {}
    first: tuple[int, int] | None = None
    target = (0, 0)
    for i, frame in pairs:
        if first is None:
            first, target = frame.size, video_smart_resize(num_frames, frame.height, frame.width, settings)
        elif frame.size != first:
            raise ValueError("video: all frames must have one size")
        kept[i] = frame.convert("RGB").resize((target[1], target[0]), Image.BICUBIC)
    if first is None:
        raise ValueError("video: no frames")
    return kept, target


class LazyFrames(Sequence[Image.Image]):
    """A video's frames, read on demand (what ``read_frames`` returns for a file or a folder).

    ``len`` needs no decoding, and ``preprocess_video`` reads only the frames HF's sampling picks, resizing each
    to the model's size as soon as it is read: memory follows the sampled frames at model size, never the
    source's length or resolution. Indexing reads one frame (a video decodes up to it), ``take`` several in one
    pass, iteration every frame one at a time; ``list(frames)`` holds them all, as a list of images would.
    """

    path: Path
    _total: int

    def __len__(self) -> int:
        return self._total

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self))))
        i = operator.index(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.path}: no frame {i} (there are {len(self)})")
        return self.take([i % len(self)])[0]

    def __iter__(self) -> Iterator[Image.Image]:
        return (frame for _, frame in self._read(None))

    def take(self, indices: Iterable[int]) -> list[Image.Image]:
        """The frames at ``indices`` (any order, repeats allowed), each read once, in one pass."""
        order = [int(i) for i in indices]
        kept = dict(self._read(sorted(set(order))))
        if missing := [i for i in order if i not in kept]:
            raise IndexError(f"{self.path}: no frame {missing[0]} (there are {len(self)})")
        return [kept[i] for i in order]

    def sampled(self, source_fps: float, settings: VideoSettings,
                sample: bool = True) -> tuple[list[Image.Image], np.ndarray, tuple[int, int]]:
        """``preprocess_video``'s frames (HF's sample, or all without ``sample``), resized as they are read,
        with their indices (for the timestamps) and the resized (height, width). A video whose decoded frame
        count differs from its header's is sampled again on the count decoding found, so the frames are those
        of decoding everything and then sampling."""
        for _ in range(2):
            total = len(self)
            indices = sample_indices(total, source_fps, settings) if sample else np.arange(total)
            kept, size = _read_resized(self._read(sorted(set(indices.tolist())), to_end=True), len(indices), settings)
            if len(self) == total:  # a pass to the end sets len to the frames it read
                return [kept[i] for i in indices.tolist()], indices, size
            log.info("%s: %d frames decoded where the header gives %d; sampling again", self.path, len(self), total)
        raise ValueError(f"{self.path}: the frame count differs from one decoding to the next ({total}, then {len(self)})")

    def _read(self, wanted: Sequence[int] | None, to_end: bool = False) -> Iterator[tuple[int, Image.Image]]:
        """(index, frame) for the ``wanted`` indices (ascending; None: every frame)."""
        raise NotImplementedError


class FrameFolder(LazyFrames):
    """A folder's frame files (sorted by name): a file is opened only when its frame is read."""

    def __init__(self, path: Path, files: Sequence[Path], pixel_limit: int | None = None) -> None:
        self.path, self.files, self.pixel_limit, self._total = path, list(files), pixel_limit, len(files)

    def _read(self, wanted: Sequence[int] | None, to_end: bool = False) -> Iterator[tuple[int, Image.Image]]:
        for i in range(len(self.files)) if wanted is None else wanted:
            yield i, read_image(self.files[i], self.pixel_limit)  # a non-image: one line naming it


class VideoFile(LazyFrames):
    """A video file's frames (PyAV), decoded sequentially from the start; only the frames asked for become
    PIL images, the others are dropped as soon as they are decoded."""

    def __init__(self, path: Path, total: int, pixel_limit: int | None = None) -> None:
        self.path, self._total, self.pixel_limit = path, total, pixel_limit

    def _read(self, wanted: Sequence[int] | None, to_end: bool = False) -> Iterator[tuple[int, Image.Image]]:
        """Decoding stops after the last wanted frame unless ``to_end``; a pass to the end sets ``len`` to the
        frames decoded. Every frame's size is checked against the image limit as it is decoded."""
        if wanted is not None and not wanted and not to_end:
            return
        av = _import_av(self.path)
        keep = None if wanted is None else set(wanted)
        last = None if wanted is None or to_end else max(wanted)
        count = 0
        try:
            with _open_video(av, self.path, self.pixel_limit) as container:
                stream = container.streams.video[0]
                stream.codec_context.options = _ffmpeg_limit(self.pixel_limit)  # the decoder refuses larger frames
                for frame in container.decode(stream):
                    count += 1
                    if count > MAX_VIDEO_FRAMES:
                        raise ValueError(f"{self.path}: the video has more than {MAX_VIDEO_FRAMES} frames, the limit")
                    check_pixels(self.path, frame.width, frame.height, self.pixel_limit, "a frame")
                    if keep is None or count - 1 in keep:
                        yield count - 1, frame.to_image()
                    if last is not None and count - 1 >= last:
                        return
        except av.error.FFmpegError as e:
            reason = _av_reason(e)
            if isinstance(e, av.error.ArgumentError):  # how a decoder refuses a frame over FFmpeg's max_pixels
                reason += f": a frame over the limit of {_limit(self.pixel_limit) / 1e6:g} megapixels, or damaged data"
            raise ValueError(f"{self.path}: cannot decode the video ({reason})") from None
        self._total = count


def _import_av(path: Path) -> Any:
    try:
        import av
    except ImportError as e:
        raise ValueError(f"{path}: reading video files needs PyAV (pip install av), or pass a folder of frames") from e
    return av


def _limit(pixel_limit: int | None) -> int:
    return IMAGE_PIXEL_LIMIT if pixel_limit is None else pixel_limit


def _ffmpeg_limit(pixel_limit: int | None) -> dict[str, str]:
    """FFmpeg's ``max_pixels`` option (a frame's pixels; at most INT_MAX): decoders refuse a larger frame
    before allocating it, also while ``av.open`` probes a stream whose header gives no size."""
    return {"max_pixels": str(min(_limit(pixel_limit), 2**31 - 1))}


def _open_video(av: Any, path: Path, pixel_limit: int | None) -> Any:
    return av.open(str(path), options=_ffmpeg_limit(pixel_limit))


def _av_reason(error: Exception) -> str:
    """PyAV's error without the file name it repeats."""
    return getattr(error, "strerror", None) or str(error).splitlines()[0] or type(error).__name__


def _frame_count(path: Path, container: Any, stream: Any, rate: float) -> int:
    """The frames of ``stream`` without decoding: its header's count, else its packets counted by demuxing
    (a packet a frame; ``LazyFrames.sampled`` corrects a count decoding contradicts). Refused over
    MAX_VIDEO_FRAMES, and a header whose duration implies more is refused before counting."""
    if stream.frames > 0:
        if stream.frames > MAX_VIDEO_FRAMES:
            raise ValueError(f"{path}: the header gives {stream.frames} frames, over the limit of {MAX_VIDEO_FRAMES} frames")
        return int(stream.frames)
    seconds = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
    if seconds * rate > MAX_VIDEO_FRAMES:
        raise ValueError(f"{path}: the header gives {seconds:.0f} seconds at {rate:g} frames per second "
                         f"(about {seconds * rate:.0f} frames), over the limit of {MAX_VIDEO_FRAMES} frames")
    count = 0
    for packet in container.demux(stream):
        count += packet.size > 0  # the demuxer ends with an empty flush packet
        if count > MAX_VIDEO_FRAMES:
            raise ValueError(f"{path}: the video has more than {MAX_VIDEO_FRAMES} frames, the limit")
    return count


def _video_header(path: Path, pixel_limit: int | None) -> tuple[int, float]:
    """A video file's frame count and rate, and its frame size checked, from the container: nothing is decoded
    but what FFmpeg's probe decodes to find a size the header lacks (a frame within the limit, at most)."""
    if size := header_size(path, pixel_limit):  # a picture given as a video: FFmpeg's probe would decode it whole
        check_pixels(path, *size, pixel_limit, "a frame")
    av = _import_av(path)
    try:
        with _open_video(av, path, pixel_limit) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if not width or not height:  # the probe found none: none in the file, or a frame over the limit
                raise ValueError(f"{path}: no frame size within the limit of {_limit(pixel_limit) / 1e6:g} megapixels "
                                 "(a frame over it, or no size in the file)")
            check_pixels(path, width, height, pixel_limit, "a frame")
            rate = float(stream.average_rate or stream.guessed_rate or 24)
            return _frame_count(path, container, stream, rate), rate
    except av.error.FFmpegError as e:
        raise ValueError(f"{path}: cannot read the video ({_av_reason(e)})") from None


def read_frames(source: str | Path | Sequence[Image.Image], fps: float | None = None,
                pixel_limit: int | None = None) -> tuple[Sequence[Image.Image], float]:
    """Frames and their rate from a list of images, a folder of image files (sorted by name), or a video
    file (needs PyAV: ``pip install builder_qwen3vl[video]``). ``fps`` is required for lists and folders.

    A folder or a file comes back as ``LazyFrames``: here only its listing or its header is read, checked against
    the limits (a frame's pixels: ``image_io.IMAGE_PIXEL_LIMIT`` or ``pixel_limit``; ``MAX_VIDEO_FRAMES``), and
    ``preprocess_video`` reads the sampled frames only.
    """
    if not isinstance(source, (str, Path)):
        if fps is None:
            raise ValueError("video frames given as images: pass fps (frames per second of the source)")
        return list(source), float(fps)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no image files ({', '.join(FRAME_SUFFIXES)})")
        if fps is None:
            raise ValueError(f"{path}: a folder of frames needs --fps (frames per second of the source)")
        return FrameFolder(path, files, pixel_limit), float(fps)
    if not path.is_file():
        raise ValueError(f"{path}: no such video file or frame folder")
    total, rate = _video_header(path, pixel_limit)
    return VideoFile(path, total, pixel_limit), float(fps or rate)
