"""A bundle's image and video settings are untrusted too: sizes past what one picture may cost are one line.

The run-time helpers resize every picture to at least the bundle's ``min_pixels`` and sample up to its
``max_frames``; a bundle that names absurd values would make them allocate whatever it says. Each is refused
when read (ValueError, one line naming the file and the key), and examples/chat.py says so in one line, exit 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder_qwen3vl.ground.video_settings import IMAGE_PIXEL_LIMIT, MAX_VIDEO_FRAMES, ImageSettings, VideoSettings
from builder_qwen3vl.runtime.og_run import resize_settings

CHAT = Path(__file__).resolve().parents[1] / "examples" / "chat.py"


def bundle_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_resize(bundle: Path, **attrs: int) -> None:
    path = bundle / "processor_config.json"
    doc = json.loads(path.read_text())
    for transform in doc["processor"]["transforms"]:
        if transform["operation"]["type"] == "Resize":
            transform["operation"]["attrs"].update(attrs)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("key, value", [("min_pixels", IMAGE_PIXEL_LIMIT * 10), ("max_pixels", 10**12), ("merge_size", 4096)])
def test_image_settings_past_the_limit_are_refused(shipped_fp32_bundle: Path, tmp_path: Path, key: str, value: int) -> None:
    bundle = bundle_copy(shipped_fp32_bundle, tmp_path / "bundle")
    edit_resize(bundle, **{key: value})
    with pytest.raises(ValueError, match=rf"processor_config.json: {key} is {value}, expected at most \d+$"):
        resize_settings(bundle)
    if key != "merge_size":  # ImageSettings reads merge_size from PatchImage, not Resize
        with pytest.raises(ValueError, match=rf"{key} is {value}, expected at most"):
            ImageSettings.from_bundle(bundle)


def test_chat_refuses_an_absurd_min_pixels_in_one_line(shipped_fp32_bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    bundle = bundle_copy(shipped_fp32_bundle, tmp_path / "bundle")
    edit_resize(bundle, min_pixels=IMAGE_PIXEL_LIMIT * 10)
    picture = tmp_path / "p.png"
    Image.new("RGB", (64, 64), "white").save(picture)
    proc = subprocess.run([sys.executable, str(CHAT), "-m", str(bundle), "--image", str(picture)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "min_pixels is 1000000000, expected at most" in lines[0]


@pytest.mark.parametrize("key, value", [("max_frames", MAX_VIDEO_FRAMES + 1), ("size", {"shortest_edge": 4096, "longest_edge": 10**13})])
def test_video_settings_past_the_limit_are_refused(shipped_fp32_bundle: Path, tmp_path: Path, key: str, value) -> None:
    bundle = bundle_copy(shipped_fp32_bundle, tmp_path / "bundle")
    path = bundle / "video_preprocessor_config.json"
    doc = json.loads(path.read_text())
    doc[key] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"video_preprocessor_config.json: .* is \d+, expected at most \d+$"):
        VideoSettings.from_bundle(bundle)


def test_a_settings_file_that_is_not_a_regular_file_is_one_line(shipped_fp32_bundle: Path, tmp_path: Path) -> None:
    import os

    bundle = bundle_copy(shipped_fp32_bundle, tmp_path / "bundle")
    (bundle / "video_preprocessor_config.json").unlink()
    os.mkfifo(bundle / "video_preprocessor_config.json")  # reading it would block forever
    with pytest.raises(ValueError, match="video_preprocessor_config.json: not a regular file"):
        VideoSettings.from_bundle(bundle)
