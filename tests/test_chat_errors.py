"""examples/chat.py on bad input: exit 2, ONE `error:` line on stderr naming the file or option, no
traceback (the run-time matrix in docs/errors.md). Each row runs chat.py as a user does, on the shipped
tiny model's bundle; all but the prompt-length row stop before the model is loaded."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builder_qwen3vl.runtime.og_run import greedy, load_model

CHAT = Path(__file__).resolve().parents[1] / "examples" / "chat.py"


def chat(*argv: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHAT), *map(str, argv)], check=False, capture_output=True, text=True, timeout=300)


def max_length(bundle: Path) -> int:
    return json.loads((bundle / "genai_config.json").read_text())["search"]["max_length"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, shipped_fp32_bundle: Path) -> dict[str, Path]:
    """The inputs of the matrix, in one folder T (printed messages say T/)."""
    t = tmp_path_factory.mktemp("chat_inputs")
    Image.new("RGB", (80, 60), (200, 40, 40)).save(t / "ok.png")
    Image.new("RGB", (402, 2), (200, 40, 40)).save(t / "wide.png")  # aspect ratio 201
    whole = (t / "ok.png").read_bytes()
    (t / "cut.png").write_bytes(whole[: len(whole) // 2])
    (t / "notes.jpg").write_text("not a picture\n")
    (t / "a_folder").mkdir()
    (t / "no_bundle").mkdir()
    (t / "frames").mkdir()
    for name, genai, processor in (("og_rejects", "{}", None), ("no_resize", None, '{"processor": {}}')):
        (t / name).mkdir()  # a bundle folder with one file broken (the other copied from the real bundle)
        for file, text in (("genai_config.json", genai), ("processor_config.json", processor)):
            (t / name / file).write_text(text if text is not None else (shipped_fp32_bundle / file).read_text())
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 100, 50)).save(t / "frames" / f"{i}.png")
    (t / "frames" / "3.png").write_text("not a frame\n")
    return {"T": t, "bundle": shipped_fp32_bundle}


# (row, argv with T/ and B (the bundle) placeholders, what the one line must contain)
ROWS = [
    ("missing bundle folder", ["-m", "T/gone", "--image", "T/ok.png"], ["-m T/gone: no such bundle folder"]),
    ("bundle folder without genai_config.json", ["-m", "T/no_bundle", "--image", "T/ok.png"],
     ["-m T/no_bundle: no genai_config.json"]),
    ("og cannot load the bundle", ["-m", "T/og_rejects", "--image", "T/ok.png"],
     ["-m T/og_rejects: onnxruntime-genai cannot load the bundle (", "verify T/og_rejects"]),
    ("processor_config.json without Resize", ["-m", "T/no_resize", "--image", "T/ok.png"],
     ["-m T/no_resize: processor_config.json has no usable Resize step"]),
    ("missing image", ["-m", "B", "--image", "T/nope.png"], ["--image T/nope.png: no such file"]),
    ("directory as image", ["-m", "B", "--image", "T/a_folder"], ["--image T/a_folder: is a folder, expected an image file"]),
    ("non-image", ["-m", "B", "--image", "T/notes.jpg"], ["--image T/notes.jpg: not an image file"]),
    ("non-image, --no-exact-grid", ["-m", "B", "--image", "T/notes.jpg", "--no-exact-grid"], ["--image T/notes.jpg: not an image file"]),
    ("truncated PNG", ["-m", "B", "--image", "T/cut.png"], ["--image T/cut.png: cannot decode the image (image file is truncated"]),
    ("aspect ratio over 200", ["-m", "B", "--image", "T/wide.png"], ["--image T/wide.png: image size 402x2: aspect ratio above 200"]),
    ("aspect ratio over 200, --no-exact-grid", ["-m", "B", "--image", "T/wide.png", "--no-exact-grid"],
     ["--image T/wide.png: image size 402x2: aspect ratio above 200"]),
    ("--max-new-tokens 0", ["-m", "B", "--image", "T/ok.png", "--max-new-tokens", "0"], ["--max-new-tokens 0: expected an integer >= 1"]),
    ("--threads -1", ["-m", "B", "--threads", "-1"], ["--threads -1: expected an integer >= 0"]),
    ("--fps 0", ["-m", "B", "--video", "T/frames", "--fps", "0"], ["--fps 0: expected frames per second > 0"]),
    ("--fps -2", ["-m", "B", "--video", "T/frames", "--fps", "-2"], ["--fps -2: expected frames per second > 0"]),
    ("frame folder with a non-image", ["-m", "B", "--video", "T/frames", "--fps", "2"], ["T/frames/3.png: not an image file"]),
]


def one_error_line(proc: subprocess.CompletedProcess, t: Path) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    line = lines[0].replace(f"{t}/", "T/")
    print(f"observed: {line}")
    return line


@pytest.mark.parametrize("argv, wanted", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line(bad: dict[str, Path], argv: list[str], wanted: list[str]) -> None:
    t = bad["T"]
    real = [str(bad["bundle"]) if a == "B" else a.replace("T/", f"{t}/") for a in argv]
    line = one_error_line(chat(*real), t)
    for text in wanted:
        assert text in line


def test_prompt_over_max_length(bad: dict[str, Path]) -> None:
    """Counted on the templated prompt with its image tokens, before generation; the line names both lengths."""
    limit = max_length(bad["bundle"])
    line = one_error_line(chat("-m", bad["bundle"], "--image", bad["T"] / "ok.png", "--prompt", " word" * limit), bad["T"])
    assert "the prompt is " in line and f"search.max_length is {limit}" in line
    assert int(line.split("the prompt is ")[1].split()[0]) > limit


def test_greedy_caps_max_length_at_the_bundle(bad: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """og_run.greedy sets max_length = prompt + max_new_tokens: never past the bundle's search.max_length."""
    limit = max_length(bad["bundle"])
    model = load_model(bad["bundle"])
    ids = np.full((1, limit - 2), 11, dtype=np.int32)  # token 11: ","
    with caplog.at_level(logging.WARNING, logger="builder_qwen3vl.runtime.og_run"):
        tokens = [t for t, _ in greedy(model, ids, max_new_tokens=64)]
    assert 1 <= len(tokens) <= 2
    assert f"answer capped at 2 new tokens: the prompt is {limit - 2} tokens" in caplog.text
    with pytest.raises(ValueError, match=f"the prompt is {limit} tokens .* search.max_length is {limit}"):
        next(greedy(model, np.full((1, limit), 11, dtype=np.int32), max_new_tokens=1))
