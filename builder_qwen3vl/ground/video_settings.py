"""The video processor settings: read from the checkpoint at build time, written into the bundle as
``video_preprocessor_config.json`` (HF's file name and format), read back at run time by ``VideoSettings.from_bundle``.

The numbers and rules follow transformers 5.25's ``Qwen3VLVideoProcessor``; its class defaults are copied
here as data so the run time needs neither transformers nor PyTorch. docs/video.md has the details.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle_paths import bundle_file, read_bundle_json
from .contract import PROCESSOR_CONFIG_FILENAME, VIDEO_CONFIG_FILENAME

# What one picture or video may cost at run time, whoever wrote the numbers (a checkpoint, a bundle, a file's header).
IMAGE_PIXEL_LIMIT = 100_000_000  # pixels of one decoded image or video frame (runtime/image_io.py says why)
MAX_VIDEO_FRAMES = 10_000_000  # frames of one video (about 4 days at 30 fps)
MAX_PATCH_SIZE = 1024  # patch_size and temporal_patch_size
MAX_MERGE_SIZE = 64

# transformers 5.x ``Qwen3VLVideoProcessor`` class attributes (what ``Qwen3VLVideoProcessor()`` uses).
HF_VIDEO_DEFAULTS: dict[str, Any] = {
    "size": {"shortest_edge": 128 * 32 * 32, "longest_edge": 768 * 32 * 32},
    "fps": 2,
    "num_frames": None,
    "min_frames": 4,
    "max_frames": 768,
    "do_sample_frames": True,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],  # IMAGENET_STANDARD_MEAN / _STD
    "image_std": [0.5, 0.5, 0.5],
    # None: transformers 5.25 warns and leaves frames uncapped (it announces True as a future default).
    "cap_pixels_per_frame": None,
    "max_video_tokens": 768,
}
HF_VIDEO_PROCESSOR_TYPE = "Qwen3VLVideoProcessor"


@dataclass(frozen=True)
class VideoSettings:
    """HF ``Qwen3VLVideoProcessor``'s settings; the defaults are its class defaults (transformers 5.x)."""

    fps: float | None = 2.0  # frames sampled per second of video (None: ``num_frames`` or every frame)
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 128 * 32 * 32  # HF size["shortest_edge"]: pixel budget over all sampled frames
    max_pixels: int = 768 * 32 * 32  # HF size["longest_edge"]
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    cap_pixels_per_frame: bool = False  # qwen-vl-utils' per-frame cap (HF: opt-in in 5.25)
    max_video_tokens: int = 768  # the cap's tokens per frame
    num_frames: int | None = None  # a fixed frame count instead of fps (HF: exclusive with fps)
    do_sample_frames: bool = True

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = VIDEO_CONFIG_FILENAME) -> VideoSettings:
        """Settings from an HF video processor dict: a flat ``video_preprocessor_config.json`` (transformers 4.x
        saves, the released checkpoints) or 5.x's nested ``processor_config.json`` (its "video_processor").
        Absent keys take the class defaults, as HF does; ``min_pixels``/``max_pixels`` keys are ignored, as
        Qwen3-VL's video processor ignores them (only ``size`` counts). ValueError (one line naming ``where``
        and the key) on nonsense."""
        if isinstance(doc.get("video_processor"), dict):
            doc = doc["video_processor"]
        d = {**HF_VIDEO_DEFAULTS, **{k: v for k, v in doc.items() if k in HF_VIDEO_DEFAULTS}}
        size = d["size"]
        if not isinstance(size, dict) or not {"shortest_edge", "longest_edge"} <= set(size):
            raise ValueError(f"{where}: size must hold shortest_edge and longest_edge (pixel counts), found {size!r}")
        fps = None if d["fps"] is None else _number(d["fps"], "fps", where, float)
        num_frames = None if d["num_frames"] is None else _number(d["num_frames"], "num_frames", where)
        if fps is not None and num_frames is not None and d["do_sample_frames"]:
            raise ValueError(f"{where}: fps and num_frames are mutually exclusive (transformers refuses both); "
                             f"set fps to null to sample num_frames={num_frames}")
        settings = cls(
            fps=fps,
            min_frames=_number(d["min_frames"], "min_frames", where),
            max_frames=_number(d["max_frames"], "max_frames", where),
            min_pixels=_number(size["shortest_edge"], "size.shortest_edge", where),
            max_pixels=_number(size["longest_edge"], "size.longest_edge", where),
            patch_size=_number(d["patch_size"], "patch_size", where),
            temporal_patch_size=_number(d["temporal_patch_size"], "temporal_patch_size", where),
            merge_size=_number(d["merge_size"], "merge_size", where),
            image_mean=_triple(d["image_mean"], "image_mean", where),
            image_std=_triple(d["image_std"], "image_std", where),
            cap_pixels_per_frame=bool(d["cap_pixels_per_frame"]),
            max_video_tokens=_number(d["max_video_tokens"], "max_video_tokens", where),
            num_frames=num_frames,
            do_sample_frames=bool(d["do_sample_frames"]),
        )
        settings.validate(where)
        return settings

    def validate(self, where: str) -> None:
        positive = {"min_frames": self.min_frames, "size.shortest_edge": self.min_pixels, "size.longest_edge": self.max_pixels,
                    "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
                    "merge_size": self.merge_size, "max_video_tokens": self.max_video_tokens}
        if self.fps is not None:
            positive["fps"] = self.fps
        if self.num_frames is not None:
            positive["num_frames"] = self.num_frames
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"{where}: {key} is {value}, expected a positive number")
        _at_most(where, {"size.shortest_edge": self.min_pixels, "size.longest_edge": self.max_pixels},
                 IMAGE_PIXEL_LIMIT * max(1, self.temporal_patch_size))
        _at_most(where, {"max_frames": self.max_frames, "num_frames": self.num_frames or 0}, MAX_VIDEO_FRAMES)
        _at_most(where, {"patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size}, MAX_PATCH_SIZE)
        _at_most(where, {"merge_size": self.merge_size}, MAX_MERGE_SIZE)
        if self.min_frames > self.max_frames:
            raise ValueError(f"{where}: min_frames {self.min_frames} is above max_frames {self.max_frames}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"{where}: size.shortest_edge {self.min_pixels} is above size.longest_edge {self.max_pixels}")
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"{where}: image_std {list(self.image_std)} has a zero (normalize would divide by it)")

    def to_dict(self) -> dict[str, Any]:
        """HF's format: ``Qwen3VLVideoProcessor.from_pretrained`` reads the bundle's file back to these settings."""
        return {
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "fps": self.fps, "num_frames": self.num_frames, "min_frames": self.min_frames, "max_frames": self.max_frames,
            "do_sample_frames": self.do_sample_frames,
            "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size, "merge_size": self.merge_size,
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "cap_pixels_per_frame": self.cap_pixels_per_frame, "max_video_tokens": self.max_video_tokens,
            "video_processor_type": HF_VIDEO_PROCESSOR_TYPE,
        }

    @classmethod
    def from_bundle(cls, bundle: str | Path) -> VideoSettings:
        """The bundle's video settings (``video_preprocessor_config.json``). A bundle built before the file
        existed gets the class defaults with patch, temporal patch and merge size (and mean/std) from its
        processor_config.json: the vision tower's, which the defaults must not contradict. Either file outside
        the bundle folder (a symlink) is a ``BundlePathError`` (a ValueError)."""
        bundle = Path(bundle)
        path = bundle_file(bundle, VIDEO_CONFIG_FILENAME)
        if path.exists():  # a FIFO or a folder under that name is an error, not a missing file
            return cls.from_dict(read_bundle_json(path), str(path))
        attrs = _og_processor_attrs(bundle_file(bundle, PROCESSOR_CONFIG_FILENAME))
        patch, normalize = attrs.get("PatchImage", {}), attrs.get("Normalize", {})
        return cls.from_dict({k: v for k, v in {
            "patch_size": patch.get("patch_size"), "temporal_patch_size": patch.get("temporal_patch_size"),
            "merge_size": patch.get("merge_size"), "image_mean": normalize.get("mean"), "image_std": normalize.get("std"),
        }.items() if v is not None}, str(bundle / PROCESSOR_CONFIG_FILENAME))

    def max_pixels_for(self, num_frames: int) -> int:
        """HF's ``max_pixels`` for a clip of ``num_frames`` sampled frames (``Qwen3VLVideoProcessor.resize``):
        ``size.longest_edge``, or with ``cap_pixels_per_frame`` a per-frame share capped at ``max_video_tokens``
        patches of factor² pixels and floored at 1.05 x ``size.shortest_edge`` (HF's integer order kept)."""
        if not self.cap_pixels_per_frame:
            return self.max_pixels
        factor = self.patch_size * self.merge_size
        frame_cap = self.max_video_tokens * factor * factor
        pixels_per_frame = max(min(frame_cap, self.max_pixels // num_frames), int(self.min_pixels * 1.05))
        return pixels_per_frame * num_frames


@dataclass(frozen=True)
class ImageSettings:
    """Image processor settings: read from a checkpoint's preprocessor_config.json (HF's format, ``from_hf_dict``)
    and from a bundle's processor_config.json (og's format, ``from_bundle``), e.g. for images that travel with a
    video through ``video.preprocess_image``, which then resizes and normalizes them as og's processor would."""

    min_pixels: int = 65536
    max_pixels: int = 16777216
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ImageSettings:
        size = d.get("size") or {}
        # Qwen3-VL writes size.shortest_edge/longest_edge (pixel counts); Qwen2-VL-style files use min/max_pixels.
        return cls(
            min_pixels=int(size.get("shortest_edge", d.get("min_pixels", cls.min_pixels))),
            max_pixels=int(size.get("longest_edge", d.get("max_pixels", cls.max_pixels))),
            patch_size=int(d.get("patch_size", cls.patch_size)),
            temporal_patch_size=int(d.get("temporal_patch_size", cls.temporal_patch_size)),
            merge_size=int(d.get("merge_size", cls.merge_size)),
            image_mean=tuple(float(x) for x in d.get("image_mean", cls.image_mean)),  # type: ignore[arg-type]
            image_std=tuple(float(x) for x in d.get("image_std", cls.image_std)),  # type: ignore[arg-type]
        )

    @classmethod
    def from_bundle(cls, bundle: str | Path) -> ImageSettings:
        """The bundle's processor_config.json (og's format); outside the bundle folder: ``BundlePathError``."""
        path = bundle_file(bundle, PROCESSOR_CONFIG_FILENAME)
        attrs = _og_processor_attrs(path)
        resize, patch, normalize = attrs.get("Resize", {}), attrs.get("PatchImage", {}), attrs.get("Normalize", {})
        where, d = str(path), cls()
        settings = cls(
            min_pixels=_number(resize.get("min_pixels", d.min_pixels), "Resize.min_pixels", where),
            max_pixels=_number(resize.get("max_pixels", d.max_pixels), "Resize.max_pixels", where),
            patch_size=_number(patch.get("patch_size", d.patch_size), "PatchImage.patch_size", where),
            temporal_patch_size=_number(patch.get("temporal_patch_size", d.temporal_patch_size),
                                        "PatchImage.temporal_patch_size", where),
            merge_size=_number(patch.get("merge_size", d.merge_size), "PatchImage.merge_size", where),
            image_mean=_triple(normalize.get("mean", d.image_mean), "Normalize.mean", where),
            image_std=_triple(normalize.get("std", d.image_std), "Normalize.std", where),
        )
        check_image_settings(where, settings.min_pixels, settings.max_pixels, settings.patch_size, settings.merge_size)
        return settings


def check_image_settings(where: str, min_pixels: int, max_pixels: int, patch_size: int, merge_size: int) -> None:
    """A bundle's image resize settings within what one picture may cost (ValueError: one line naming ``where``)."""
    for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels), ("patch_size", patch_size),
                       ("merge_size", merge_size)):
        if not value > 0:
            raise ValueError(f"{where}: {key} is {value}, expected a positive number")
    _at_most(where, {"min_pixels": min_pixels, "max_pixels": max_pixels}, IMAGE_PIXEL_LIMIT)
    _at_most(where, {"patch_size": patch_size}, MAX_PATCH_SIZE)
    _at_most(where, {"merge_size": merge_size}, MAX_MERGE_SIZE)
    if min_pixels > max_pixels:
        raise ValueError(f"{where}: min_pixels {min_pixels} is above max_pixels {max_pixels}")


class SettingsLimitError(ValueError):
    """A settings file asks for more than one picture or video may cost; the message names the file and the key."""


def _at_most(where: str, values: dict[str, int], limit: int) -> None:
    for key, value in values.items():
        if value > limit:
            raise SettingsLimitError(f"{where}: {key} is {value}, expected at most {limit}")


def _og_processor_attrs(path: Path) -> dict[str, dict[str, Any]]:
    """og's processor_config.json as {transform type: attrs}; {} when the file is absent."""
    if not path.is_file():
        return {}
    transforms = (read_bundle_json(path).get("processor") or {}).get("transforms") or []
    return {t["operation"]["type"]: t["operation"].get("attrs", {}) for t in transforms if "operation" in t}


def _number(value: Any, key: str, where: str, kind: type = int) -> Any:
    """``value`` as ``kind``; an int key must hold a whole number (HF would fail later on 2.5 patches)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {key} is {value!r}, expected a number")
    if kind is int and value != int(value):
        raise ValueError(f"{where}: {key} is {value!r}, expected a whole number")
    return kind(value)


def _triple(value: Any, key: str, where: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise ValueError(f"{where}: {key} is {value!r}, expected 3 numbers (one per RGB channel)")
    return tuple(_number(v, key, where, float) for v in values)  # type: ignore[return-value]
