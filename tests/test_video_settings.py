"""Video settings follow the checkpoint and transformers (no build here; og-vs-HF tokens are in test_video.py).

- Reading: the settings ``read_video_settings`` finds in a checkpoint folder equal what HF's
  ``Qwen3VLVideoProcessor.from_pretrained`` loads from it (its file order: nested processor_config.json,
  video_preprocessor_config.json, preprocessor_config.json); the bundle's file reads back the same, in ours and HF's.
- Grids: ``video_smart_resize`` against HF's own ``Qwen3VLVideoProcessor.resize`` (the per-frame cap included) and
  its module-level video ``smart_resize``, for the released settings and variants, over many frame counts and sizes.
- Sampling: ``sample_indices`` against HF's ``sample_frames`` for several settings.
- Nonsense in video_preprocessor_config.json: one-line InputError naming the file and the key.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_video_smart_resize

from builder_qwen3vl.checkpoint.reader import read_checkpoint, read_video_settings
from builder_qwen3vl.checkpoint.config import VisionConfig
from builder_qwen3vl.ground.errors import InputError
from builder_qwen3vl.testing.checkpoints import reference_json, tiny_config
from builder_qwen3vl.runtime.video import VideoSettings, sample_indices, video_smart_resize

RELEASED = reference_json("qwen3-vl-video_preprocessor_config.json")  # Qwen3-VL-*-Instruct's file
IMAGE_FILE = reference_json("qwen3-vl-preprocessor_config.json")


def _vision(merge: int = 2) -> VisionConfig:
    return VisionConfig.from_dict(tiny_config(spatial_merge_size=merge)["vision_config"])


def _hf_fields(p: Qwen3VLVideoProcessor) -> tuple:
    return (p.size.shortest_edge, p.size.longest_edge, p.fps, p.num_frames, p.min_frames, p.max_frames,
            p.patch_size, p.temporal_patch_size, p.merge_size, tuple(p.image_mean), tuple(p.image_std),
            bool(p.cap_pixels_per_frame), p.max_video_tokens, p.do_sample_frames)


def _our_fields(s: VideoSettings) -> tuple:
    return (s.min_pixels, s.max_pixels, s.fps, s.num_frames, s.min_frames, s.max_frames, s.patch_size,
            s.temporal_patch_size, s.merge_size, s.image_mean, s.image_std, s.cap_pixels_per_frame,
            s.max_video_tokens, s.do_sample_frames)


def _write(folder: Path, files: dict[str, dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in files.items():
        (folder / name).write_text(json.dumps(doc))
    return folder


FOLDERS = {  # name: the processor files of a checkpoint folder
    "released": {"video_preprocessor_config.json": RELEASED, "preprocessor_config.json": IMAGE_FILE},
    "capped": {"video_preprocessor_config.json": {**RELEASED, "cap_pixels_per_frame": True, "max_video_tokens": 300}},
    "sampling_changed": {"video_preprocessor_config.json": {**RELEASED, "fps": 1, "min_frames": 2, "max_frames": 64}},
    # HF's fallback: no video file, so the image processor's file sets the video budget too (65536..16777216)
    "image_file_only": {"preprocessor_config.json": IMAGE_FILE},
    # transformers 5.x saves every processor nested in processor_config.json; it wins over the flat files
    "nested_5x": {"processor_config.json": {"image_processor": IMAGE_FILE,
                                            "video_processor": {**RELEASED, "fps": 3, "size": {"shortest_edge": 8192, "longest_edge": 999424}}},
                  "video_preprocessor_config.json": RELEASED},
}


@pytest.mark.parametrize("name", list(FOLDERS))
def test_reading_follows_hf_from_pretrained(tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    folder = _write(tmp_path / name, FOLDERS[name])
    with caplog.at_level(logging.INFO, logger="builder_qwen3vl.checkpoint.reader"):
        ours = read_video_settings(folder, _vision())
    assert _our_fields(ours) == _hf_fields(Qwen3VLVideoProcessor.from_pretrained(folder))
    assert [r.levelname for r in caplog.records] == ["INFO"] and "video settings from " in caplog.text
    # the bundle's file (HF's format) reads back the same, in ours and in HF's reader
    bundle = _write(tmp_path / f"{name}_bundle", {"video_preprocessor_config.json": ours.to_dict()})
    assert VideoSettings.from_bundle(bundle) == ours
    assert _hf_fields(Qwen3VLVideoProcessor.from_pretrained(bundle)) == _our_fields(ours)


def test_released_file_is_carried(tmp_path: Path) -> None:
    ours = read_video_settings(_write(tmp_path, FOLDERS["released"]), _vision())
    assert (ours.min_pixels, ours.max_pixels, ours.fps, ours.min_frames, ours.max_frames) == (4096, 25165824, 2.0, 4, 768)
    assert VideoSettings().max_pixels == 786432  # the class default the bundles used before: 32x less


def test_no_file_uses_class_defaults_with_the_towers_sizes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="builder_qwen3vl.checkpoint.reader"):
        ours = read_video_settings(_write(tmp_path, {}), _vision(merge=1))
    assert len(caplog.records) == 1 and "video uses transformers' Qwen3VLVideoProcessor class defaults" in caplog.text
    assert _our_fields(ours) == _hf_fields(Qwen3VLVideoProcessor(merge_size=1))
    with pytest.raises(OSError):  # HF itself loads nothing from such a folder
        Qwen3VLVideoProcessor.from_pretrained(tmp_path)


def test_older_bundle_falls_back_to_its_processor_config(tmp_path: Path) -> None:
    """A bundle without the video file: class defaults on the patch/merge sizes of its og processor_config.json."""
    og_config = {"processor": {"transforms": [
        {"operation": {"type": "Normalize", "attrs": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "qwen3_vl": 1}}},
        {"operation": {"type": "PatchImage", "attrs": {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 1}}}]}}
    settings = VideoSettings.from_bundle(_write(tmp_path, {"processor_config.json": og_config}))
    assert settings == VideoSettings(merge_size=1)


# ---------------------------------------------------------------- grids against HF's own code

FRAME_COUNTS = (1, 2, 3, 4, 5, 8, 15, 16, 31, 64, 127, 384, 768)
SIZES = [(h, w) for h in (20, 64, 90, 240, 360, 481, 720, 1080, 2160) for w in (12, 96, 160, 427, 640, 1280, 1920, 3840)]
GRID_SETTINGS = {
    "released": RELEASED,
    "released_capped": {**RELEASED, "cap_pixels_per_frame": True},
    "released_capped_256": {**RELEASED, "cap_pixels_per_frame": True, "max_video_tokens": 256},
    "class_defaults": {},
    "merge_1": {**RELEASED, "merge_size": 1},
}


@pytest.fixture()
def hf_resize_size(monkeypatch: pytest.MonkeyPatch):
    """HF's own ``Qwen3VLVideoProcessor.resize`` (budget, per-frame cap, smart_resize) up to the pixel resize, which
    needs torchvision: the backend's resize returns the size HF asked for instead of resizing."""
    backend = next(c for c in Qwen3VLVideoProcessor.__mro__[1:] if "resize" in c.__dict__)
    monkeypatch.setattr(backend, "resize", lambda self, image, size, **kw: (size.height, size.width))

    def size_of(proc: Qwen3VLVideoProcessor, frames: int, height: int, width: int) -> tuple[int, int]:
        videos = torch.empty(1, 1, 1, 1, 1).expand(1, frames, 3, height, width)  # shape only, no memory
        return proc.resize(videos, size=proc.size, resample=None, factor=proc.patch_size * proc.merge_size,
                           temporal_factor=proc.temporal_patch_size, cap_pixels_per_frame=proc.cap_pixels_per_frame,
                           max_video_tokens=proc.max_video_tokens)
    return size_of


@pytest.mark.parametrize("name", list(GRID_SETTINGS))
def test_video_grids_follow_hf(name: str, hf_resize_size) -> None:
    ours_settings = VideoSettings.from_dict(GRID_SETTINGS[name])
    proc = Qwen3VLVideoProcessor(**GRID_SETTINGS[name])
    factor = proc.patch_size * proc.merge_size
    compared = 0
    for frames in FRAME_COUNTS:
        for height, width in SIZES:
            try:
                expected = hf_resize_size(proc, frames, height, width)
            except ValueError:  # fewer frames than temporal_patch_size, aspect ratio over 200: ours refuses too
                with pytest.raises(ValueError):
                    video_smart_resize(frames, height, width, ours_settings)
                continue
            got = video_smart_resize(frames, height, width, ours_settings)
            assert got == expected, (name, frames, height, width)
            if not proc.cap_pixels_per_frame:  # the module function, as the uncapped resize calls it
                assert got == hf_video_smart_resize(frames, height, width, temporal_factor=proc.temporal_patch_size,
                                                    factor=factor, min_pixels=proc.size.shortest_edge,
                                                    max_pixels=proc.size.longest_edge)
            t = -(-frames // proc.temporal_patch_size)
            assert t * got[0] * got[1] // proc.patch_size**2 == proc.get_num_of_video_patches(frames, height, width)
            compared += 1
    assert compared > 0.8 * len(FRAME_COUNTS) * len(SIZES)


SAMPLING_SETTINGS = {
    "released": RELEASED,
    "fps_1_frames_2_to_16": {**RELEASED, "fps": 1, "min_frames": 2, "max_frames": 16},
    "fps_half_min_8": {**RELEASED, "fps": 0.5, "min_frames": 8},
    "num_frames_6": {**RELEASED, "fps": None, "num_frames": 6},
    "every_frame": {**RELEASED, "fps": None, "max_frames": 64},
}


@pytest.mark.parametrize("name", list(SAMPLING_SETTINGS))
def test_sampling_follows_hf_settings(name: str) -> None:
    """``sample_indices`` against HF's ``sample_frames``, called as ``preprocess`` does (fps and num_frames given)."""
    proc = Qwen3VLVideoProcessor(**SAMPLING_SETTINGS[name])
    settings = VideoSettings.from_dict(SAMPLING_SETTINGS[name])
    for total in (2, 3, 5, 8, 30, 300, 10000):
        for fps in (2.0, 4.0, 25.0, 29.97):
            ref = proc.sample_frames(SimpleNamespace(total_num_frames=total, fps=fps), num_frames=proc.num_frames, fps=proc.fps)
            np.testing.assert_array_equal(sample_indices(total, fps, settings), ref, err_msg=f"{name}: {total} at {fps}")


# ---------------------------------------------------------------- nonsense in the checkpoint's file

BAD = [
    ({"fps": 0}, "fps is 0.0, expected a positive number"),
    ({"min_frames": 10, "max_frames": 4}, "min_frames 10 is above max_frames 4"),
    ({"size": {"shortest_edge": -1, "longest_edge": 100}}, "size.shortest_edge is -1, expected a positive number"),
    ({"size": {"longest_edge": 100}}, "size must hold shortest_edge and longest_edge"),
    ({"size": {"shortest_edge": 9000, "longest_edge": 100}}, "size.shortest_edge 9000 is above size.longest_edge 100"),
    ({"patch_size": "16"}, "patch_size is '16', expected a number"),
    ({"merge_size": 1.5}, "merge_size is 1.5, expected a whole number"),
    ({"image_std": [0.5, 0, 0.5]}, "image_std [0.5, 0.0, 0.5] has a zero"),
    ({"image_mean": [0.5, 0.5]}, "image_mean is [0.5, 0.5], expected 3 numbers"),
    ({"num_frames": 8}, "fps and num_frames are mutually exclusive"),
    ({"merge_size": 1}, "merge_size is 1 but config.json vision_config spatial_merge_size is 2"),
]


@pytest.mark.parametrize("change,reason", BAD, ids=[r for _, r in BAD])
def test_bad_video_config_is_one_line(small_ckpt: Path, change: dict, reason: str) -> None:
    path = small_ckpt / "video_preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(InputError) as info:
        read_checkpoint(small_ckpt)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message


def test_image_file_quirks_do_not_stop_a_build(small_ckpt: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With no video file HF reads preprocessor_config.json for video; a Qwen2-VL-style size there (fine for the
    image reader) gives a warning and the class defaults, not an error."""
    (small_ckpt / "video_preprocessor_config.json").unlink()
    image = small_ckpt / "preprocessor_config.json"
    image.write_text(json.dumps({**json.loads(image.read_text()), "size": {"min_pixels": 65536, "max_pixels": 16777216}}))
    assert read_checkpoint(small_ckpt).video == VideoSettings()
    assert "video uses transformers' Qwen3VLVideoProcessor class defaults instead" in caplog.text
