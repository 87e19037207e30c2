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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .video_frames import FRAME_SUFFIXES, LazyFrames, read_frames  # noqa: F401 (read_frames re-exported)
from .video_sampling import frame_timestamps, sample_indices, video_smart_resize  # noqa: F401 (re-exported)
from ..ground.tokens import IMAGE_PAD, VIDEO_PAD, VIDEO_TAG, VISION_END, VISION_START  # noqa: F401 (re-exported)
from ..ground.video_settings import ImageSettings, VideoSettings  # re-exported: `from builder_qwen3vl.video import VideoSettings`

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
