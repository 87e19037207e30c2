"""Shared fixtures: tiny random Qwen3-VL checkpoints written offline by builder_qwen3vl.testing."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest
from fake_bundle import NEW_FILES, write_files
from stub_tokenizer import write_stub_tokenizer

from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

# The end-to-end parity fixtures (session-scoped: two test files share their bundles).
pytest_plugins = ["e2e_fixtures"]

# The tiny model's training and evaluation are not in the wheel: tests import them as tiny_model from tools/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


@pytest.fixture(scope="session")
def small_ckpt_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fast checkpoint (small vocabulary, stub tokenizer) for reader/CLI tests; copy before mutating."""
    folder = tmp_path_factory.mktemp("small_ckpt")
    write_checkpoint(folder, tiny_config(vocab_size=512), tokenizer=False)
    write_stub_tokenizer(folder)
    return folder


@pytest.fixture()
def small_ckpt(small_ckpt_template: Path, tmp_path: Path) -> Path:
    """A private copy of the small checkpoint that a test may break."""
    dst = tmp_path / "ckpt"
    shutil.copytree(small_ckpt_template, dst)
    return dst


@pytest.fixture(scope="session")
def shipped_fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fp32 bundle of the shipped tiny trained model (~20 s), built once per session; do not modify it."""
    from builder_qwen3vl import BuildOptions, build
    from builder_qwen3vl.shipped.assembly import shipped_checkpoint

    checkpoint = shipped_checkpoint(tmp_path_factory.mktemp("shipped_cache"))
    return build(BuildOptions(input=checkpoint, output=tmp_path_factory.mktemp("shipped") / "fp32", precision="fp32"))


@pytest.fixture()
def fake_exporters(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the exporters with one that writes NEW_FILES (safetensors-like 0600); returns the staging folders used."""
    build_module = importlib.import_module("builder_qwen3vl.pipeline")
    used: list[Path] = []

    def fake_write_bundle(ckpt, plan, options, out: Path) -> None:
        used.append(out)
        write_files(out, NEW_FILES)
        (out / "model.onnx").chmod(0o600)

    monkeypatch.setattr(build_module, "write_bundle", fake_write_bundle)
    return used
