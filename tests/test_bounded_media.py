"""Untrusted pictures and videos cost bounded memory: a picture over ``IMAGE_PIXEL_LIMIT`` is refused from its
header (one line, nothing decoded), and a video is sampled before it is decoded, so peak memory follows the
sampled frames, not the file's length; the frames read are those of decoding everything and then sampling.

Peak memory is the peak RSS of a subprocess that reads the file, minus that of a baseline subprocess that
imports the same modules and reads only what costs nothing (a small picture, the video's header). On Linux both
restart their peak after the imports (``/proc/self/clear_refs``) and read it as ``VmHWM``: ``ru_maxrss`` also
counts the parent's pages when the subprocess is started with vfork, which hides growth under pytest's size;
elsewhere ``ru_maxrss`` is the (coarser) figure."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builder_qwen3vl.runtime import video_frames as video_module
from builder_qwen3vl.runtime.image_io import IMAGE_PIXEL_LIMIT, ImageReadError, read_image
from builder_qwen3vl.runtime.video_frames import FrameFolder, VideoFile
from builder_qwen3vl.runtime.video import (VideoSettings, preprocess_video, read_frames,
                                           sample_indices)

av = pytest.importorskip("av")

# Prints the subprocess's peak RSS (MiB) and what reading gave. `mode`: baseline or image (read_image), header
# (read_frames only), take (the sampled frames) or preprocess (preprocess_video, what chat.py runs).
PEAK = """
import json, resource, sys
from builder_qwen3vl.runtime.image_io import ImageReadError, read_image
from builder_qwen3vl.runtime.video import VideoSettings, preprocess_video, read_frames, sample_indices
mode, path = sys.argv[1], sys.argv[2]
try:  # Linux: restart the peak here, so the imports' own transient peak hides nothing of the read's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
out = {}
if mode in ("baseline", "image"):
    try:
        out["size"] = read_image(path).size
    except ImageReadError as e:
        out["error"] = str(e)
else:
    frames, fps = read_frames(path)  # the header only: the video baseline stops here
    if mode == "take":
        out["frames"] = len(frames.take(sample_indices(len(frames), fps)))
    elif mode == "preprocess":
        out["grid"] = preprocess_video(frames, fps, VideoSettings()).grid_thw
try:  # Linux: this process's own peak. ru_maxrss can start at the parent's (vfork then exec counts its pages)
    with open("/proc/self/status") as f:
        out["peak_mib"] = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
except (OSError, StopIteration):
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""

SIDE = 12000  # a 144-megapixel PNG: 432 MB of RGB once decoded, and the reader's copies on top
FRAMES, WIDTH, HEIGHT, RATE = 600, 320, 240, 30  # 20 s: HF's 2 frames a second sample 40 of the 600


def peak(mode: str, path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PEAK, mode, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def huge_png(path: Path, side: int = SIDE) -> Path:
    """An all-black RGB PNG of ``side`` x ``side`` pixels, compressed a row at a time (about 2 MB, under a second)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate, row = zlib.compressobj(1), bytes(1 + 3 * side)
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def lying_gif(path: Path, width: int, height: int) -> Path:
    """A GIF whose screen is 10x10 and whose one frame claims ``width`` x ``height``: PIL grows the image to the frame."""
    screen = struct.pack("<HHBBB", 10, 10, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    path.write_bytes(b"GIF89a" + screen + frame + b";")
    return path


def write_clip(path: Path, frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT, codec: str = "mpeg4",
               fmt: str | None = None, pix_fmt: str = "yuv420p") -> Path:
    """A clip of a bar crossing a dark frame, each frame's colours its own (about 0.3 s for 600 frames)."""
    picture = np.zeros((height, width, 3), np.uint8)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            picture[:] = 16
            x = (i * 7) % (width - 20)
            picture[:, x:x + 20] = (i % 256, 255 - i % 256, 80 + i % 100)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture(scope="module")
def decoded(clip: Path) -> list[np.ndarray]:
    """The reference: every frame of the clip decoded with PyAV, in order."""
    with av.open(str(clip)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]


def one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    text = str(error.value)
    assert "\n" not in text and all(p in text for p in parts), text
    return text


def test_huge_png_is_refused_from_its_header(tmp_path: Path) -> None:
    path = huge_png(tmp_path / "huge.png")
    small = tmp_path / "small.png"
    Image.new("RGB", (80, 60), (10, 20, 30)).save(small)
    base, read = peak("baseline", small), peak("image", path)
    assert read["error"] == (f"{path}: the image is {SIDE}x{SIDE} pixels (144.0 megapixels), "
                             "over the limit of 100 megapixels")
    growth = read["peak_mib"] - base["peak_mib"]
    print(f"peak RSS: baseline {base['peak_mib']:.1f} MiB, huge PNG {read['peak_mib']:.1f} MiB (+{growth:.1f})")
    # Measured: +0 MiB (+-0.3); decoding this PNG in full (load, EXIF copy, RGB copy) peaks at +1650 MiB.
    # Bound 50 MiB: far below one decoded copy (PIL's RGB: 549 MiB), with room for noise between two processes.
    assert growth < 50


def test_limit_is_a_parameter_and_pil_is_left_alone(tmp_path: Path) -> None:
    """``pixel_limit`` overrides the module's limit; PIL's global and the warning filters are as they were."""
    path = tmp_path / "photo.png"
    Image.new("RGB", (400, 300), (1, 2, 3)).save(path)
    pil_limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with pytest.raises(ImageReadError) as info:
        read_image(path, pixel_limit=100_000)
    assert one_line(info) == f"{path}: the image is 400x300 pixels (0.1 megapixels), over the limit of 0.1 megapixels"
    assert read_image(path, pixel_limit=120_000).size == (400, 300)
    assert read_image(path).size == (400, 300) and IMAGE_PIXEL_LIMIT == 100_000_000
    assert Image.MAX_IMAGE_PIXELS == pil_limit and warnings.filters == filters


def test_decompression_bombs_are_the_same_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GIF frame larger than its screen: PIL's own error over 2 * Image.MAX_IMAGE_PIXELS (it names only the
    pixels), this module's limit under it; and a caller's lower PIL limit is reported as the limit hit."""
    with pytest.raises(ImageReadError) as info:
        read_image(lying_gif(tmp_path / "bomb.gif", 20000, 10000))
    one_line(info, "bomb.gif: the image is 200000000 pixels (200.0 megapixels), over the limit of 100 megapixels")
    with pytest.raises(ImageReadError) as info:
        read_image(lying_gif(tmp_path / "grown.gif", SIDE, SIDE))
    one_line(info, f"grown.gif: the image is {SIDE}x{SIDE} pixels (144.0 megapixels), over the limit of 100 megapixels")
    small = tmp_path / "small.png"
    Image.new("RGB", (80, 60)).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the caller's setting: PIL raises over 2000 pixels
    with pytest.raises(ImageReadError) as info:
        read_image(small)
    one_line(info, "small.png: the image is 4800 pixels (0.0 megapixels), over the limit of 0.002 megapixels")


def test_video_memory_follows_the_sampled_frames(clip: Path) -> None:
    base, take, prep = peak("header", clip), peak("take", clip), peak("preprocess", clip)
    sampled = len(sample_indices(FRAMES, RATE))
    assert take["frames"] == sampled == 40
    frame_mib = WIDTH * HEIGHT * 3 / 2**20
    growth = {name: run["peak_mib"] - base["peak_mib"] for name, run in (("take", take), ("preprocess", prep))}
    print(f"peak RSS over the header-only baseline ({base['peak_mib']:.1f} MiB): {growth}; "
          f"sampled frames {sampled * frame_mib:.1f} MiB, all frames {FRAMES * frame_mib:.1f} MiB")
    # Measured: take +15.5 MiB (40 frames of 0.22 MiB, the decoder's buffers, PIL); preprocess +35 MiB (float32
    # copies of the resized frames). Decoding every frame and then sampling (a list to preprocess_video) peaks at
    # +224 MiB. Bounds: the sampled frames + 35 MiB, and 80 MiB: both well under the 132 MiB of 600 frames alone.
    assert growth["take"] < sampled * frame_mib + 35
    assert growth["preprocess"] < 80


def test_video_frames_equal_decoding_everything(clip: Path, decoded: list[np.ndarray]) -> None:
    """The frames kept are those of decoding all and then sampling: pixels, count, timestamps, and the
    resize-as-read pipeline equals the list path's exactly."""
    frames, fps = read_frames(clip)
    assert isinstance(frames, VideoFile) and (len(frames), fps) == (len(decoded), float(RATE)) == (FRAMES, RATE)
    indices = sample_indices(len(decoded), fps)
    for got, i in zip(frames.take(indices), indices):
        assert np.array_equal(np.asarray(got), decoded[i]), i
    assert np.array_equal(np.asarray(frames[-1]), decoded[-1]) and len(frames[10:13]) == 3
    everything = [Image.fromarray(a) for a in decoded]
    for settings in (VideoSettings(), VideoSettings(fps=None, num_frames=7), VideoSettings(max_pixels=25165824, min_pixels=4096)):
        want, got = preprocess_video(everything, fps, settings), preprocess_video(read_frames(clip)[0], fps, settings)
        assert (got.grid_thw, got.timestamps) == (want.grid_thw, want.timestamps)
        assert np.array_equal(got.pixel_values, want.pixel_values)


def test_a_wrong_header_count_is_sampled_again(clip: Path, decoded: list[np.ndarray]) -> None:
    """A header that miscounts the frames: decoding counts them and samples again, as the list path would."""
    want = preprocess_video([Image.fromarray(a) for a in decoded], RATE)
    for claimed in (FRAMES - 50, FRAMES + 50):
        frames = VideoFile(clip, claimed)
        got = preprocess_video(frames, RATE)
        assert len(frames) == FRAMES and got.timestamps == want.timestamps
        assert np.array_equal(got.pixel_values, want.pixel_values)


def test_container_without_a_frame_count(tmp_path: Path) -> None:
    """Matroska gives no frame count: the packets are counted (demuxed, not decoded)."""
    path = write_clip(tmp_path / "clip.mkv", frames=30, fmt="matroska")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    frames, fps = read_frames(path)
    assert (len(frames), fps) == (30, float(RATE))


def test_hostile_video_headers_are_one_line(tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames over the image limit and absurd lengths are refused from the header, before any decoding.

    FFmpeg's probe runs under its ``max_pixels`` option: where the container states a size the decoder refuses,
    the probe reports none, so the line gives the limit but not the size."""
    raw = bytearray(write_clip(tmp_path / "raw.avi", frames=2, width=32, height=16, codec="rawvideo", pix_fmt="rgb24").read_bytes())
    struct.pack_into("<ii", raw, raw.index(b"strf") + 12, 20000, 10000)  # BITMAPINFOHEADER width, height
    (tmp_path / "wide.avi").write_bytes(raw)
    with pytest.raises(ValueError) as info:
        read_frames(tmp_path / "wide.avi")
    one_line(info, "wide.avi: no frame size within the limit of 100 megapixels (a frame over it, or no size in the file)")
    with pytest.raises(ValueError) as info:
        read_frames(clip, pixel_limit=320 * 240 - 1)
    one_line(info, "clip.mp4: no frame size within the limit of 0.076799 megapixels")
    assert len(read_frames(clip, pixel_limit=320 * 240)[0]) == FRAMES
    with pytest.raises(ValueError) as info:  # the decoder's own guard, for frames that grow past the header's size
        VideoFile(clip, FRAMES, pixel_limit=1000).take([0])
    one_line(info, "clip.mp4: cannot decode the video (Invalid argument: a frame over the limit of 0.001 megapixels, or damaged data)")
    with pytest.raises(ValueError) as info:  # a picture given as a video: FFmpeg's probe would decode it whole
        read_frames(huge_png(tmp_path / "huge.png"))
    one_line(info, f"huge.png: a frame is {SIDE}x{SIDE} pixels (144.0 megapixels), over the limit of 100 megapixels")

    mkv = bytearray(write_clip(tmp_path / "short.mkv", frames=4, fmt="matroska").read_bytes())
    struct.pack_into(">d", mkv, mkv.index(b"\x44\x89\x88") + 3, 1e12)  # Segment Duration, in milliseconds
    (tmp_path / "long.mkv").write_bytes(mkv)
    with pytest.raises(ValueError) as info:
        read_frames(tmp_path / "long.mkv")
    one_line(info, "long.mkv: the header gives 1000000000 seconds at 30 frames per second (about 30000000000 frames), "
                   "over the limit of 10000000 frames")

    monkeypatch.setattr(video_module, "MAX_VIDEO_FRAMES", 100)
    with pytest.raises(ValueError) as info:
        read_frames(clip)
    one_line(info, f"clip.mp4: the header gives {FRAMES} frames, over the limit of 100 frames")
    with pytest.raises(ValueError) as info:
        preprocess_video(VideoFile(clip, 50), RATE)  # a header that understates: decoding stops at the limit
    one_line(info, "clip.mp4: the video has more than 100 frames, the limit")
    (tmp_path / "notes.mp4").write_text("not a video\n")
    with pytest.raises(ValueError) as info:
        read_frames(tmp_path / "notes.mp4")
    one_line(info, "notes.mp4: cannot read the video (Invalid data found when processing input)")


def test_frame_folder_opens_only_the_sampled_files(tmp_path: Path) -> None:
    """A folder of 40 frames at 10 fps samples 8: the other files are never opened (here they are not images)."""
    indices = sample_indices(40, 10.0).tolist()
    assert len(indices) == 8
    pictures = []
    for i in range(40):
        picture = Image.new("RGB", (64, 48), (i * 6, 100, 200 - i * 4))
        pictures.append(picture)
        if i in indices:
            picture.save(tmp_path / f"{i:03d}.png")
        else:
            (tmp_path / f"{i:03d}.png").write_text("never opened\n")
    frames, fps = read_frames(tmp_path, fps=10)
    assert isinstance(frames, FrameFolder) and len(frames) == 40
    got, want = preprocess_video(frames, fps), preprocess_video(pictures, fps)
    assert got.timestamps == want.timestamps and np.array_equal(got.pixel_values, want.pixel_values)
    with pytest.raises(ImageReadError) as info:
        frames[1]
    one_line(info, "001.png: not an image file")
