"""Shared fixtures: tiny random Qwen3-VL checkpoints written offline by builder_qwen3vl.testing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from stub_tokenizer import write_stub_tokenizer

from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint


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
