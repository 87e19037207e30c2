"""The offline checkpoint fixtures: HF loads them as written, in both formats and every dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from builder_qwen3vl.checkpoint.reader import read_checkpoint
from builder_qwen3vl.runtime.resize import hf_grid, smart_resize
from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint


@pytest.mark.parametrize("fmt,dtype,shards", [("4.57", "fp32", 1), ("5.x", "bf16", 2)])
def test_hf_loads_fixture_without_missing_keys(tmp_path: Path, fmt: str, dtype: str, shards: int) -> None:
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    folder = write_checkpoint(tmp_path / "c", tiny_config(), config_format=fmt, dtype=dtype, shards=shards)
    model, info = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id == 151655
    ckpt = read_checkpoint(folder)
    assert ckpt.chat_template and "<|vision_start|>" in ckpt.chat_template
    assert {info.dtype for info in ckpt.tensors.values()} == {{"fp32": "F32", "bf16": "BF16"}[dtype]}


def test_fixture_is_deterministic_across_sharding(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = write_checkpoint(tmp_path / "a", tiny_config(vocab_size=512), shards=1, tokenizer=False)
    b = write_checkpoint(tmp_path / "b", tiny_config(vocab_size=512), shards=3, tokenizer=False)
    index = json.loads((b / "model.safetensors.index.json").read_text())["weight_map"]
    ta = load_file(str(a / "model.safetensors"))
    for name, shard in index.items():
        assert torch.equal(ta[name], load_file(str(b / shard))[name]), name


def test_smart_resize_matches_hf() -> None:
    """Our dependency-free smart_resize picks HF's size for every size in a sweep (HF's PIL processor)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    for h in range(16, 1500, 13):
        for w in range(16, 1500, 17):
            expected = tuple(hf_smart_resize(h, w, factor=32, min_pixels=65536, max_pixels=16777216))
            assert smart_resize(h, w) == expected, (h, w)
    assert hf_grid(720, 1280) == (1, 44, 80)  # the size where og's own rounding gives [1, 46, 80]
