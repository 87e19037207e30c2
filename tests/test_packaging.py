"""The configs/ templates ship inside the wheel and a non-editable install finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kwargs) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    assert res.returncode == 0, f"{cmd[:4]} failed: {res.stderr[-2000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)])
    (whl,) = out.glob("builder_qwen3vl-*.whl")
    return whl


def test_wheel_contains_templates_and_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "builder-qwen3vl = builder_qwen3vl.cli:main" in zf.read(entry_points).decode()
    assert "builder_qwen3vl/configs/genai_config.json" in names
    assert "builder_qwen3vl/configs/vision_processor.json" in names


def test_non_editable_install_finds_templates(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    # Install with the outer pip into the fresh venv's site-packages, without dependencies:
    # importing the package and its templates needs nothing beyond the standard library.
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)])
    probe = (
        "import builder_qwen3vl, json\n"
        "from builder_qwen3vl.bundle.templates import templates_dir, load_template\n"
        "print(templates_dir())\n"
        "print(load_template('genai_config.json')['model']['type'])\n"
        "print(builder_qwen3vl.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    location, model_type, package_file = _run([str(py), "-c", probe], cwd=tmp_path, env=env).split()
    assert location.startswith(site) and model_type == "qwen3_vl"
    assert package_file.startswith(site), "imported the source tree instead of the installed wheel"
