"""The checkpoint reader: both config formats, sharding, dtypes, and each error it must name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from builder_qwen3vl.checkpoint.reader import read_checkpoint
from builder_qwen3vl.checkpoint.config import Qwen3VLConfig
from builder_qwen3vl.ground.errors import InputError
from builder_qwen3vl.testing.checkpoints import reference_config, tiny_config, to_5x_format, write_checkpoint

from stub_tokenizer import write_stub_tokenizer


def _write(folder: Path, **kwargs) -> Path:
    write_checkpoint(folder, tiny_config(vocab_size=512), tokenizer=False, **kwargs)
    write_stub_tokenizer(folder)
    return folder


@pytest.mark.parametrize("name,hidden,deepstack", [("2b", 2048, 3), ("4b", 2560, 3), ("8b", 4096, 3), ("32b", 5120, 3)])
def test_reference_configs_parse_in_both_formats(name: str, hidden: int, deepstack: int) -> None:
    raw = reference_config(name)
    old = Qwen3VLConfig.from_dict(raw)
    new = Qwen3VLConfig.from_dict(to_5x_format(raw))
    assert (old.text, old.vision, old.tokens) == (new.text, new.vision, new.tokens)
    assert "rope_scaling" in raw["text_config"] and "rope_parameters" in to_5x_format(raw)["text_config"]
    assert old.text.hidden_size == hidden and old.num_deepstack == deepstack
    assert old.vision.patch_dim == 1536
    assert old.text.rope.mrope_interleaved and sum(old.text.rope.mrope_section) == old.text.head_dim // 2


def test_reference_config_matches_transformers_reading() -> None:
    """Our typed view agrees with transformers' own parsing of the same file."""
    from transformers import Qwen3VLConfig as HFConfig

    raw = reference_config("4b")
    ours = Qwen3VLConfig.from_dict(raw)
    hf = HFConfig.from_dict(raw)
    assert ours.text.hidden_size == hf.text_config.hidden_size
    assert ours.text.num_key_value_heads == hf.text_config.num_key_value_heads
    assert list(ours.text.rope.mrope_section) == hf.text_config.rope_parameters["mrope_section"]
    assert ours.text.rope.theta == hf.text_config.rope_parameters["rope_theta"]
    assert list(ours.vision.deepstack_visual_indexes) == list(hf.vision_config.deepstack_visual_indexes)
    assert ours.tokens.image_token_id == hf.image_token_id


@pytest.mark.parametrize("fmt", ["4.57", "5.x"])
@pytest.mark.parametrize("shards", [1, 3])
def test_reads_both_formats_single_and_sharded(tmp_path: Path, fmt: str, shards: int) -> None:
    ckpt = read_checkpoint(_write(tmp_path / "c", config_format=fmt, shards=shards))
    assert ("rope_parameters" in ckpt.raw_config["text_config"]) == (fmt == "5.x")
    assert (tmp_path / "c" / "model.safetensors.index.json").exists() == (shards > 1)
    assert ckpt.config.text.vocab_size == 512
    assert ckpt.config.tokens.eos_token_ids == (151645, 151643)  # from generation_config.json
    assert ckpt.config.processor.min_pixels == 65536 and ckpt.config.processor.max_pixels == 16777216
    assert ckpt.config.generation.top_k == 20
    assert {p.name for p in ckpt.tokenizer_files} >= {"tokenizer.json", "tokenizer_config.json"}


@pytest.mark.parametrize("dtype,tag", [("bf16", "BF16"), ("fp16", "F16"), ("fp32", "F32")])
def test_reads_every_float_dtype(tmp_path: Path, dtype: str, tag: str) -> None:
    tensors = read_checkpoint(_write(tmp_path / "c", dtype=dtype)).tensors
    assert {info.dtype for info in tensors.values()} == {tag}


def test_chat_template_sources(small_ckpt: Path) -> None:
    (small_ckpt / "chat_template.jinja").write_text("{{ messages }}")
    assert read_checkpoint(small_ckpt).chat_template == "{{ messages }}"
    (small_ckpt / "chat_template.jinja").unlink()
    (small_ckpt / "chat_template.json").write_text(json.dumps({"chat_template": "T"}))
    assert read_checkpoint(small_ckpt).chat_template == "T"


def _edit_config(folder: Path, edit) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _expect(folder: Path, *fragments: str) -> str:
    with pytest.raises(InputError) as err:
        read_checkpoint(folder)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_error_folder_missing(tmp_path: Path) -> None:
    _expect(tmp_path / "nope", "folder not found")


def test_error_input_is_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    _expect(tmp_path / "f", "found a file")


def test_error_config_missing(small_ckpt: Path) -> None:
    (small_ckpt / "config.json").unlink()
    _expect(small_ckpt, "no config.json")


def test_error_config_not_json(small_ckpt: Path) -> None:
    (small_ckpt / "config.json").write_text("{ not json")
    _expect(small_ckpt, "config.json", "not valid JSON")


def test_error_qwen25_vl(small_ckpt: Path) -> None:
    _edit_config(small_ckpt, lambda c: c.update(architectures=["Qwen2_5_VLForConditionalGeneration"], model_type="qwen2_5_vl"))
    _expect(small_ckpt, "not a Qwen3-VL checkpoint", "Qwen2_5_VLForConditionalGeneration")


def test_error_text_only_qwen3(small_ckpt: Path) -> None:
    (small_ckpt / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}))
    _expect(small_ckpt, "not a Qwen3-VL checkpoint", "Qwen3ForCausalLM")


def test_error_mrope_section(small_ckpt: Path) -> None:
    _edit_config(small_ckpt, lambda c: c["text_config"]["rope_scaling"].update(mrope_section=[6, 5, 4]))
    _expect(small_ckpt, "mrope_section", "expected head_dim/2 = 16")


def test_error_hidden_not_divisible(small_ckpt: Path) -> None:
    _edit_config(small_ckpt, lambda c: c["text_config"].update(num_attention_heads=5, num_key_value_heads=5))
    _expect(small_ckpt, "hidden_size=64 is not divisible by num_attention_heads=5")


def test_error_weights_missing(small_ckpt: Path) -> None:
    (small_ckpt / "model.safetensors").unlink()
    _expect(small_ckpt, "no weights found")


def test_error_shard_missing(tmp_path: Path) -> None:
    folder = _write(tmp_path / "c", shards=3)
    (folder / "model-00002-of-00003.safetensors").unlink()
    _expect(folder, "model.safetensors.index.json", "model-00002-of-00003.safetensors", "missing")


def test_error_truncated_safetensors(small_ckpt: Path) -> None:
    path = small_ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(small_ckpt, "model.safetensors", "truncated")


def _rewrite_weights(folder: Path, edit) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def test_error_tensor_missing(small_ckpt: Path) -> None:
    _rewrite_weights(small_ckpt, lambda t: t.pop("model.visual.merger.linear_fc2.weight"))
    _expect(small_ckpt, "lack tensor 'model.visual.merger.linear_fc2.weight'", "expected shape [64, 256]")


def test_error_tensor_wrong_shape(small_ckpt: Path) -> None:
    def edit(t):
        t["model.language_model.layers.1.self_attn.k_proj.weight"] = torch.zeros(32, 64)

    _rewrite_weights(small_ckpt, edit)
    _expect(small_ckpt, "k_proj.weight' has shape [32, 64], expected [64, 64]")


def test_extra_tensor_warns_only(small_ckpt: Path, caplog: pytest.LogCaptureFixture) -> None:
    _rewrite_weights(small_ckpt, lambda t: t.update({"model.mtp.extra": torch.zeros(2)}))
    read_checkpoint(small_ckpt)
    assert "unexpected tensor" in caplog.text and "model.mtp.extra" in caplog.text


def test_error_tokenizer_missing(small_ckpt: Path) -> None:
    (small_ckpt / "tokenizer.json").unlink()
    _expect(small_ckpt, "tokenizer file tokenizer.json is missing")


def test_fixture_tensor_names_match_reader_expectation(small_ckpt_template: Path) -> None:
    """The fixture names tensors from HF's model class; the reader's expectation must agree exactly."""
    from builder_qwen3vl.checkpoint.reader import expected_tensors
    from builder_qwen3vl.checkpoint.safetensors_index import read_checkpoint_tensors

    ckpt = read_checkpoint(small_ckpt_template)
    expected = expected_tensors(ckpt.config.text, ckpt.config.vision)
    found = read_checkpoint_tensors(small_ckpt_template)
    assert set(found) == set(expected)


def test_error_deepstack_needs_more_layers(small_ckpt: Path) -> None:
    """D > layers: HF would drop the blocks past the last layer; we refuse (D == layers builds, test_end_to_end)."""
    _edit_config(small_ckpt, lambda c: c["text_config"].update(num_hidden_layers=2))
    _expect(small_ckpt, "3 DeepStack layers need at least 3 text layers")
