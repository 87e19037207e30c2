"""Shared pieces of the benchmark phases: settings passed to child processes, timing, inputs."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SIZES = ((448, 448), (1000, 667))  # (width, height) of the two benchmark images
QUESTION_TOKENS = 32


@dataclass
class Settings:
    """Everything a phase needs; written to work/settings.json by the parent, read by each child."""

    shape: str
    checkpoint: str
    work: str
    contexts: list[int] = field(default_factory=lambda: [256, 2048])
    decode_steps: int = 32  # decode steps timed per measurement (og runtime / HF)
    repeats: int = 5  # repeats of fast measurements (ours; HF fp32 at small sizes)
    slow_repeats: int = 1  # repeats of slow HF measurements (bf16, large image TTFT)
    hf_bf16_2048: bool = False  # HF bf16 decode at context 2048 (prefill alone takes minutes)
    threads: int = 2
    extra_options: str = ""  # passed to the bundle build as --extra_options (e.g. block_size=128)

    @property
    def bundle(self) -> Path:
        return Path(self.work) / "bundle-int4"

    @property
    def og_text(self) -> Path:
        return Path(self.work) / "og-text-int4"

    @property
    def results(self) -> Path:
        return Path(self.work) / "results"

    def save(self) -> None:
        Path(self.work).mkdir(parents=True, exist_ok=True)
        (Path(self.work) / "settings.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, work: str | Path) -> Settings:
        return cls(**json.loads((Path(work) / "settings.json").read_text()))


def write_result(settings: Settings, phase: str, data: dict[str, Any]) -> None:
    settings.results.mkdir(parents=True, exist_ok=True)
    (settings.results / f"{phase}.json").write_text(json.dumps(data, indent=2))


def read_result(settings: Settings, phase: str) -> dict[str, Any] | None:
    path = settings.results / f"{phase}.json"
    return json.loads(path.read_text()) if path.exists() else None


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Median/min/all wall seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times, "warmup": warmup}


def random_pixel_values(grid_thw: tuple[int, int, int], patch_dim: int, seed: int = 0) -> np.ndarray:
    """Pixel rows in the normalized range [-1, 1]; vision cost does not depend on the values.

    Both our encoder and HF's receive exactly this array.
    """
    t, h, w = grid_thw
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(t * h * w, patch_dim)).astype(np.float32)


def test_image(path: Path, width: int, height: int) -> Path:
    """A deterministic RGB gradient+noise PNG of the given size."""
    from PIL import Image

    if not path.exists():
        rng = np.random.default_rng(width * 10007 + height)
        y, x = np.mgrid[0:height, 0:width]
        rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
        rgb = np.clip(rgb + rng.integers(-20, 21, size=rgb.shape), 0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, "RGB").save(path)
    return path


def question_text(tokenize: Callable[[str], list[int]], n_tokens: int = QUESTION_TOKENS) -> str:
    """An English question that the Qwen tokenizer encodes to exactly ``n_tokens`` tokens."""
    words = ("Describe the picture in detail and say which colours, shapes and objects you can see "
             "in each part of it, from left to right and from the top down to the bottom edge please").split()
    text = ""
    for word in words * 4:
        candidate = (text + " " + word).strip()
        if len(tokenize(candidate)) > n_tokens:
            break
        text = candidate
    while len(tokenize(text)) < n_tokens:
        text += "?"
    if len(tokenize(text)) != n_tokens:
        raise RuntimeError(f"could not make a {n_tokens}-token question (got {len(tokenize(text))})")
    return text


def text_prompt_ids(n_tokens: int, seed: int = 0) -> np.ndarray:
    """Random ordinary (non-special) Qwen token ids, shape [1, n_tokens] int64."""
    rng = np.random.default_rng(seed)
    return rng.integers(1000, 150000, size=(1, n_tokens), dtype=np.int64)


def benchmark_images(settings: Settings) -> list[dict[str, Any]]:
    """The two benchmark images, already at HF's target size (so og's and HF's grids agree)."""
    from PIL import Image

    from builder_qwen3vl.runtime.resize import hf_grid, resize_for_og

    out = []
    for width, height in IMAGE_SIZES:
        raw = test_image(Path(settings.work) / "images" / f"raw_{width}x{height}.png", width, height)
        path = Path(settings.work) / "images" / f"image_{width}x{height}.png"
        if not path.exists():
            with Image.open(raw) as img:
                resize_for_og(img.convert("RGB")).save(path)
        grid = hf_grid(height, width)
        out.append({"name": f"{width}x{height}", "path": str(path), "grid_thw": list(grid), "patches": grid[0] * grid[1] * grid[2]})
    return out


def hf_vision_output_path(settings: Settings, image_name: str) -> Path:
    """HF fp32's vision output for one benchmark image, saved by measure_hf for the parity of ours."""
    return Path(settings.work) / f"hf_vision_fp32_{image_name}.npy"


def cpu_info() -> dict[str, Any]:
    """The CPU's model name, the SIMD instruction sets that decide int8 and fp32 GEMM speed, and the logical CPUs."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    isa = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX512"), ("avx512_vnni", "AVX512-VNNI"),
                                   ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "AVX512-BF16"), ("amx_int8", "AMX-INT8")) if flag in flags]
    return {"model": model, "isa": isa, "logical_cpus": text.count("processor\t:")}


def write_docs_section(heading: str, text: str, docs: Path) -> None:
    """Replace the section of ``docs`` that starts with ``heading`` (up to the next ``## ``) by ``text``, or append it."""
    page = docs.read_text() if docs.exists() else ""
    start = page.find(heading)
    if start < 0:
        page = page.rstrip("\n") + "\n\n" + text
    else:
        nxt = page.find("\n## ", start + len(heading))
        page = page[:start] + text + (page[nxt + 1 :] if nxt >= 0 else "")
    docs.write_text(page)
