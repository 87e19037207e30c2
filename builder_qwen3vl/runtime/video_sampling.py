"""HF's video sampling rules (transformers' ``Qwen3VLVideoProcessor``): which frames, at what size, dated when.

Pure numbers, no decoding: ``video_frames.py`` reads only the frames these pick, ``video.py`` turns them into
the vision encoder's input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..ground.video_settings import VideoSettings


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
