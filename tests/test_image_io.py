"""builder_qwen3vl.runtime.image_io: every format PIL reads becomes 8-bit RGB as HF makes it from the file (16-bit:
>> 8, as og's decoder), a bad file is one ImageReadError line, and og's own decoder never sees a user file
(it ends the process on BMP, WebP, TIFF, GIF and non-images; docs/bundle.md)."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builder_qwen3vl.runtime.image_io import ImageReadError, read_image

CHAT = Path(__file__).resolve().parents[1] / "examples" / "chat.py"
# Decoded with og's processor, as a user of og.Images.open would; the atexit line shows a normal exit.
OG_OPEN = """
import atexit, json, sys
import onnxruntime_genai as og
atexit.register(lambda: print("atexit ran"))
model = og.Model(sys.argv[1])
prompt = og.Tokenizer(model).apply_chat_template(messages=json.dumps(
    [{"role": "user", "content": "<|vision_start|><|image_pad|><|vision_end|>hi"}]), add_generation_prompt=True)
model.create_multimodal_processor()(prompt, images=og.Images.open(sys.argv[2]))
print("decoded")
"""


def picture(width: int = 80, height: int = 60, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one): PIL reads it back as 8-bit RGB (the high bytes)."""
    height, width, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    rgb = picture()
    alpha = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80), dtype=np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    la = rgb.convert("L")
    la.putalpha(alpha)
    palette = rgb.quantize(64)
    palette.info["transparency"] = 3  # a transparent palette entry, as in many GIFs and PNGs
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation "rotate 90": HF's load_image applies it, so does read_image
    out = {"cmyk.jpg": (rgb.convert("CMYK"), {}), "palette.png": (palette, {}), "rgba.png": (rgba, {}),
           "la.png": (la, {}), "rotated.jpg": (rgb, {"exif": exif}), "bmp.bmp": (rgb, {}), "webp.webp": (rgb, {}),
           "tiff.tiff": (rgb, {}), "gif.gif": (rgb, {})}
    paths = {}
    for name, (img, kwargs) in out.items():
        img.save(folder / name, **kwargs)
        paths[name] = folder / name
    frames = [picture(seed=s).convert("P") for s in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    paths["animated.gif"] = folder / "animated.gif"
    (folder / "notes.jpg").write_text("hello, not a picture\n")
    paths["notes.jpg"] = folder / "notes.jpg"
    return paths


@pytest.mark.parametrize("name", ["cmyk.jpg", "palette.png", "rgba.png", "la.png", "rotated.jpg"])
def test_reader_matches_hf_pixel_values(files: dict[str, Path], name: str) -> None:
    """HF's Qwen3-VL image processor on the file loaded HF's way (load_image) and on read_image's output."""
    from e2e_helpers import load_hf_image_processor
    from transformers.image_utils import load_image

    from builder_qwen3vl.shipped.assembly import shipped_dir

    processor = load_hf_image_processor(shipped_dir())
    hf = processor(images=[load_image(str(files[name]))], return_tensors="np")
    ours = processor(images=[read_image(files[name])], return_tensors="np")
    assert ours["image_grid_thw"].tolist() == hf["image_grid_thw"].tolist()
    # One 8-bit level after Rescale(1/255) and Normalize(std): 1/255/std (std 0.5 here: 0.0078).
    tolerance = 1 / 255 / min(processor.image_std) + 1e-6
    assert np.abs(ours["pixel_values"] - hf["pixel_values"]).max() <= tolerance


def test_sixteen_bit_is_scaled_not_saturated(tmp_path: Path) -> None:
    """16-bit grey and RGB PNGs equal their 8-bit (>> 8) copies; PIL's convert("RGB") (HF's load_image)
    clips 16-bit grey to white, which the reader avoids."""
    grey16 = np.random.default_rng(2).integers(0, 65536, (40, 50), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    want = Image.fromarray((grey16 >> 8).astype(np.uint8), "L").convert("RGB")
    assert np.array_equal(np.asarray(read_image(tmp_path / "grey16.png")), np.asarray(want))
    assert np.asarray(Image.open(tmp_path / "grey16.png").convert("RGB")).mean() > 250  # what HF would see

    rgb16 = np.random.default_rng(3).integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    got = read_image(write_png16(tmp_path / "rgb16.png", rgb16))
    assert np.array_equal(np.asarray(got), (rgb16 >> 8).astype(np.uint8))


def test_every_format_becomes_rgb8(files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    for name in ("bmp.bmp", "webp.webp", "tiff.tiff", "gif.gif", "cmyk.jpg", "palette.png", "la.png"):
        img = read_image(files[name])
        assert img.mode == "RGB" and img.size == (80, 60), name
    assert read_image(files["rotated.jpg"]).size == (60, 80)  # EXIF orientation applied
    assert np.array_equal(np.asarray(read_image(files["animated.gif"])), np.asarray(picture(seed=0).convert("P").convert("RGB")))
    assert "animated.gif: GIF with 3 frames; using the first" in caplog.text


def test_bad_files_are_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    png = tmp_path / "cut.png"
    picture().save(png)
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    cases = {files["notes.jpg"]: "not an image file (expected PNG, JPEG, BMP, WebP, TIFF or GIF)",
             png: "cannot decode the image (image file is truncated", tmp_path / "nope.png": "no such file",
             tmp_path: "is a folder, expected an image file"}
    for path, message in cases.items():
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert str(info.value).startswith(f"{path}: {message}") and "\n" not in str(info.value)
        assert isinstance(info.value, ValueError) and info.value.exit_code == 2


def test_og_decoder_ends_the_process_where_chat_answers(shipped_fp32_bundle: Path, files: dict[str, Path]) -> None:
    """og.Images.open on BMP/WebP/TIFF/GIF/a text file: the process exits 1 with libjpeg's message and no atexit
    (the claims in docs/bundle.md); chat.py --no-exact-grid answers about the same BMP (it hands og PNG bytes)."""
    names = ["bmp.bmp", "webp.webp", "tiff.tiff", "gif.gif", "notes.jpg"]
    runs = [subprocess.Popen([sys.executable, "-c", OG_OPEN, str(shipped_fp32_bundle), str(files[n])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in names]
    chat = subprocess.run([sys.executable, str(CHAT), "-m", str(shipped_fp32_bundle), "--image", str(files["bmp.bmp"]),
                           "--no-exact-grid", "--prompt", "What colour is the circle?", "--max-new-tokens", "4"],
                          check=False, capture_output=True, text=True, timeout=300)
    for name, run in zip(names, runs):
        out, err = run.communicate(timeout=300)
        assert run.returncode == 1 and "Not a JPEG file: starts with 0x" in err, (name, run.returncode, err)
        assert "atexit ran" not in out and "Traceback" not in err, name
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
