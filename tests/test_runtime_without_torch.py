"""The run-time side needs no PyTorch: examples/chat.py answers about an image and a video with torch (and
transformers, which would pull it in) made unimportable, and gives the same answer as with them installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder_qwen3vl.shipped import shapes_task

CHAT = Path(__file__).resolve().parents[1] / "examples" / "chat.py"


@pytest.fixture(scope="module")
def blocked_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``torch`` and ``transformers`` packages raise ImportError on import; put first on sys.path."""
    folder = tmp_path_factory.mktemp("no_torch")
    for name in ("torch", "transformers"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked by the test')\n")
    return folder


def _chat(args: list[str], blocked: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if blocked is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(blocked), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, str(CHAT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_blocker_works(blocked_path: Path) -> None:
    """The control: with the blocker first on the path, importing torch fails."""
    env = {**os.environ, "PYTHONPATH": str(blocked_path)}
    res = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "torch is blocked by the test" in res.stderr


@pytest.mark.parametrize("kind", ["image", "video"])
def test_chat_runs_without_torch(kind: str, shipped_fp32_bundle: Path, blocked_path: Path, tmp_path: Path) -> None:
    sample = shapes_task.make_sample(shapes_task.HELD_OUT_SEED, 3)
    if kind == "image":
        sample.image.save(tmp_path / "picture.png")
        args = ["--image", str(tmp_path / "picture.png"), "--prompt", sample.question]
    else:
        frames = tmp_path / "frames"
        frames.mkdir()
        for i in range(4):  # the same picture as four frames: a still video
            sample.image.save(frames / f"{i:03d}.png")
        args = ["--video", str(frames), "--fps", "2", "--prompt", sample.question]
    args = ["-m", str(shipped_fp32_bundle), *args, "--max-new-tokens", "6"]
    without = _chat(args, blocked_path)
    assert without.returncode == 0, without.stderr
    assert "Traceback" not in without.stderr
    with_torch = _chat(args, None)
    assert with_torch.returncode == 0, with_torch.stderr
    print(f"{kind}: without torch {without.stdout.strip()!r}, with torch {with_torch.stdout.strip()!r}")
    assert without.stdout == with_torch.stdout and without.stdout.strip()
