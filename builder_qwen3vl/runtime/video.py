"""Video through onnxruntime-genai 0.18's image path (og's processor takes images only).

Qwen3-VL's language model treats a video of grid [T, h, w] as T frames of grid [1, h, w]: HF's
``get_rope_index`` splits ``video_grid_thw`` per temporal patch, the timestamps (``<0.5 seconds>``) are
plain text before each frame's ``<|vision_start|> ... <|vision_end|>``, and the vision tower attends within
each frame. So a video travels as T images: ``pixel_values`` from real consecutive frame pairs
(temporal_patch_size 2), one ``image_grid_thw`` row [1, h, w] per temporal patch, and the prompt HF's
processor writes, with ``<|image_pad|>`` where HF writes ``<|video_pad|>`` (both are replaced by vision
features; the id itself never reaches the decoder).

Frame sampling, resize budget and timestamps follow HF's ``Qwen3VLVideoProcessor`` / ``Qwen3VLProcessor``
with the checkpoint's video settings, which the bundle carries (``VideoSettings.from_bundle``, video_settings.py);
pixels are resized with PIL's bicubic filter (HF's video processor uses torchvision's), so values may differ
from HF's by resize rounding. No PyTorch at run time: numpy and PIL only. docs/video.md has the details.
"""

from __future__ import annotations

import logging
import math
import operator
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .image_io import IMAGE_PIXEL_LIMIT, check_pixels, header_size, read_image
from ..ground.tokens import IMAGE_PAD, VIDEO_PAD, VIDEO_TAG, VISION_END, VISION_START  # noqa: F401 (re-exported)
from ..ground.video_settings import MAX_VIDEO_FRAMES, ImageSettings, VideoSettings  # re-exported: `from builder_qwen3vl.video import VideoSettings`

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

log = logging.getLogger(__name__)


@dataclass
class VisualInput:
    """One video (or one image, as a 1-frame video) ready for the vision encoder."""

    pixel_values: np.ndarray  # [T * h * w, 3 * temporal_patch_size * patch_size**2] float32
    grid_thw: tuple[int, int, int]  # (T temporal patches, h, w patches)
    merge_size: int  # the vision tower's spatial merge: merge_size**2 patches make one token
    timestamps: list[float] = field(default_factory=list)  # seconds, one per temporal patch (videos only)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_thw[1] * self.grid_thw[2] // self.merge_size**2

    def frame_grids(self) -> list[list[int]]:
        """``image_grid_thw`` rows for og: one [1, h, w] per temporal patch."""
        return [[1, self.grid_thw[1], self.grid_thw[2]]] * self.grid_thw[0]


def sample_indices(total_frames: int, source_fps: float, settings: VideoSettings = VideoSettings()) -> np.ndarray:
    """HF's uniform sampling (``Qwen3VLVideoProcessor.sample_frames``): ``fps`` frames per second of video, clamped
    to [min_frames, max_frames] and the total; or ``num_frames`` (then frames may repeat); or, with neither, every
    frame clamped to [min_frames, max_frames]."""
    if total_frames < 1:
        raise ValueError("video: no frames")
    if settings.num_frames is not None:
        wanted = settings.num_frames
    elif settings.fps is not None:
        wanted = int(total_frames / source_fps * settings.fps)
        wanted = min(max(wanted, settings.min_frames), settings.max_frames, total_frames)
    else:
        wanted = min(max(total_frames, settings.min_frames), settings.max_frames)
    return np.linspace(0, total_frames - 1, wanted).round().astype(int)


def video_smart_resize(num_frames: int, height: int, width: int, settings: VideoSettings = VideoSettings()) -> tuple[int, int]:
    """HF's video ``smart_resize`` as ``Qwen3VLVideoProcessor.resize`` calls it: sides multiples of patch * merge,
    the pixel budget counted over all ``num_frames`` sampled frames (before the temporal padding), its maximum
    per ``settings.max_pixels_for`` (the optional per-frame cap). Same int/round/floor/ceil order as HF."""
    factor, t_factor = settings.patch_size * settings.merge_size, settings.temporal_patch_size
    if num_frames < t_factor:  # HF raises here too
        raise ValueError(f"video: {num_frames} frame(s); transformers needs at least temporal_patch_size={t_factor}")
    max_pixels = settings.max_pixels_for(num_frames)
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"video: aspect ratio {max(height, width) / min(height, width):.0f} is over 200")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(num_frames / t_factor) * t_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < settings.min_pixels:
        beta = math.sqrt(settings.min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def frame_timestamps(indices: Sequence[int], source_fps: float, temporal_patch_size: int = 2) -> list[float]:
    """HF's timestamps: each temporal patch at the mean time of its first and last frame (last frame repeated)."""
    idx = list(indices)
    while len(idx) % temporal_patch_size:
        idx.append(idx[-1])
    times = [i / source_fps for i in idx]
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


def patchify(frames_FCHW: np.ndarray, settings: VideoSettings | ImageSettings) -> tuple[np.ndarray, tuple[int, int, int]]:
    """HF's patch layout: rows in (t, h-block, w-block, merge row, merge col) order, each C * tp * p * p long."""
    tp, p, m = settings.temporal_patch_size, settings.patch_size, settings.merge_size
    if pad := -len(frames_FCHW) % tp:  # HF repeats the last frame
        frames_FCHW = np.concatenate([frames_FCHW, np.repeat(frames_FCHW[-1:], pad, axis=0)])
    f, c, h, w = frames_FCHW.shape
    gt, gh, gw = f // tp, h // p, w // p
    x = frames_FCHW.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p), dtype=np.float32), (gt, gh, gw)


def _normalize(frames: list[Image.Image], height: int, width: int, settings: VideoSettings | ImageSettings) -> np.ndarray:
    arrays = [np.asarray(f.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.float32) for f in frames]
    x = np.stack(arrays) / 255.0
    x = (x - np.array(settings.image_mean, np.float32)) / np.array(settings.image_std, np.float32)
    return x.transpose(0, 3, 1, 2).astype(np.float32)  # [F, C, H, W]


def preprocess_video(frames: Sequence[Image.Image], source_fps: float, settings: VideoSettings = VideoSettings(),
                     sample: bool | None = None) -> VisualInput:
    """Sample ``frames`` (all of a video's frames, at ``source_fps``) as HF does, resize, normalize, patchify.

    ``settings``: the bundle's, ``VideoSettings.from_bundle(bundle)`` (the default is transformers' class
    defaults, not a checkpoint's). ``sample=False`` keeps every frame given (frames already sampled;
    ``source_fps`` then dates them); None follows the settings' ``do_sample_frames``.
    """
    if not frames:
        raise ValueError("video: no frames")
    sample = settings.do_sample_frames if sample is None else sample
    if isinstance(frames, LazyFrames):  # a file or folder (read_frames): only the sampled frames are read
        picked, indices, (new_h, new_w) = frames.sampled(source_fps, settings, sample)
    else:
        indices = sample_indices(len(frames), source_fps, settings) if sample else np.arange(len(frames))
        picked = [frames[i] for i in indices]
        width, height = picked[0].size
        if any(f.size != (width, height) for f in picked):
            raise ValueError("video: all frames must have one size")
        new_h, new_w = video_smart_resize(len(picked), height, width, settings)
    pixels, grid = patchify(_normalize(picked, new_h, new_w, settings), settings)
    timestamps = frame_timestamps(indices.tolist(), source_fps, settings.temporal_patch_size)
    return VisualInput(pixels, grid, settings.merge_size, timestamps)


def video_placeholder(video: VisualInput, pad: str = IMAGE_PAD) -> str:
    """What HF's processor writes in place of a video's ``<|video_pad|>``: per temporal patch a timestamp and
    the frame's tags (HF 5.x replaces only the pad, so the template's own start/end tags stay around it)."""
    return "".join(f"<{t:.1f} seconds>{VISION_START}{pad * video.tokens_per_frame}{VISION_END}" for t in video.timestamps)


def expand_prompt(text: str, visuals: Sequence[VisualInput]) -> str:
    """Expand a chat-templated prompt's visual tags for og, in order: each ``<|video_pad|>`` becomes its video's
    placeholder (``<|image_pad|>`` per feature row), each ``<|image_pad|>`` its image's pad run. ``text``:
    ``og_run.chat_prompt(..., num_videos=...)``, which keeps special tokens the user typed as text, so the only
    tags here are the ones it placed."""
    pieces = re.split(f"({re.escape(IMAGE_PAD)}|{re.escape(VIDEO_PAD)})", text)
    tags = pieces[1::2]
    if len(tags) != len(visuals):
        raise ValueError(f"prompt has {len(tags)} image/video tags but {len(visuals)} images and videos were given")
    out = [pieces[0]]
    for tag, visual, after in zip(tags, visuals, pieces[2::2]):
        is_video = bool(visual.timestamps)
        if (tag == VIDEO_PAD) != is_video:
            raise ValueError(f"prompt tag {tag} is given {'a video' if is_video else 'an image'}")
        out.append(video_placeholder(visual) if is_video else IMAGE_PAD * visual.tokens_per_frame)
        out.append(after)
    return "".join(out)


def preprocess_image(image: Image.Image, settings: ImageSettings = ImageSettings()) -> VisualInput:
    """An image as HF's image processor makes it (smart_resize with the image budget, the frame repeated over
    temporal_patch_size): for prompts that mix images and videos. ``settings``: ``ImageSettings.from_bundle(bundle)``
    (the bundle's processor_config.json: pixel budget, patch and merge sizes, mean/std)."""
    from .resize import smart_resize

    height, width = smart_resize(image.height, image.width, factor=settings.patch_size * settings.merge_size,
                                 min_pixels=settings.min_pixels, max_pixels=settings.max_pixels)
    pixels, grid = patchify(_normalize([image], height, width, settings), settings)
    return VisualInput(pixels, grid, settings.merge_size)


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


def og_inputs(og: Any, tokenizer: Any, prompt: str, visuals: Sequence[VisualInput]) -> Any:
    """og.NamedTensors for ``og.Generator.set_inputs``: the prompt (visual tags already expanded) and the
    visuals in prompt order, each frame an og image. ValueError (one line) when the prompt's ``<|image_pad|>``
    tokens are not the visuals' feature rows (og would fail, or pair features with the wrong tokens)."""
    ids = np.asarray(tokenizer.encode(prompt), dtype=np.int32)[None]
    _check_pad_count(ids, int(tokenizer.to_token_id(IMAGE_PAD)), visuals)
    grids = [row for v in visuals for row in v.frame_grids()]
    named = og.NamedTensors()
    named["input_ids"] = ids
    if visuals:
        # Freshly allocated int64 arrays: og 0.18 rejects some int64 views ("Unsupported numpy type").
        named["pixel_values"] = np.concatenate([v.pixel_values for v in visuals]).astype(np.float32)
        named["image_grid_thw"] = np.array(grids, dtype=np.int64)
        named["num_image_tokens"] = np.array([v.tokens_per_frame for v in visuals for _ in range(v.grid_thw[0])], dtype=np.int64)
    return named


def _check_pad_count(ids: np.ndarray, pad_id: int, visuals: Sequence[VisualInput]) -> None:
    found, needed = int((ids == pad_id).sum()), sum(v.tokens_per_frame * v.grid_thw[0] for v in visuals)
    if found != needed:
        raise ValueError(f"the prompt holds {found} {IMAGE_PAD} tokens but its images and videos need {needed}: "
                         "build it with og_run.chat_prompt and video.expand_prompt (typed special tokens stay text there)")
