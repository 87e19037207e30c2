"""Qwen3-VL MoE checkpoints as the reader sees them: the released configs in both formats, HF's tensor names
and shapes, the disk estimate in og's expert format, and bad MoE checkpoints refused in one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from stub_tokenizer import write_stub_tokenizer
from test_bad_input import assert_no_leftovers, run_cli, the_error_line

from builder_qwen3vl.checkpoint.config import Qwen3VLConfig
from builder_qwen3vl.checkpoint.reader import expected_tensors
from builder_qwen3vl.options import BuildOptions
from builder_qwen3vl.plan import make_plan
from builder_qwen3vl.testing.moe_checkpoints import (
    reference_moe_config,
    tiny_moe_config,
    to_5x_moe_format,
    write_moe_checkpoint,
)

# ---------------------------------------------------------------- the released configs and tensor names

@pytest.mark.parametrize("name", ["30b-a3b", "235b-a22b"])
def test_released_moe_configs_read_in_both_formats(name: str) -> None:
    from transformers import Qwen3VLMoeConfig

    raw = reference_moe_config(name)
    old, new = Qwen3VLConfig.from_dict(raw), Qwen3VLConfig.from_dict(to_5x_moe_format(raw))
    assert (old.text, old.vision, old.tokens, old.architecture) == (new.text, new.vision, new.tokens, new.architecture)
    hf = Qwen3VLMoeConfig.from_dict(raw).text_config
    assert old.text.is_moe and (old.text.num_experts, old.text.num_experts_per_tok, old.text.moe_intermediate_size) == (
        hf.num_experts, hf.num_experts_per_tok, hf.moe_intermediate_size)
    assert old.text.sparse_layers == list(range(hf.num_hidden_layers))


def test_expected_tensors_are_hf_names_and_shapes_for_30b_a3b() -> None:
    """The reader's list for the released 30B-A3B config is HF's own state_dict (meta device), the fused experts in
    the released layout ([E, H, 2I] / [E, I, H], transposes of transformers 5's parameters)."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    raw = reference_moe_config("30b-a3b")
    cfg = Qwen3VLConfig.from_dict(raw)
    with torch.device("meta"):
        hf = {k: tuple(v.shape) for k, v in Qwen3VLMoeForConditionalGeneration(Qwen3VLMoeConfig.from_dict(raw)).state_dict().items()}
    ours = expected_tensors(cfg.text, cfg.vision)
    released = {k: (s[0], s[2], s[1]) if ".mlp.experts." in k else s for k, s in hf.items()}
    assert ours == released
    assert ours["model.language_model.layers.0.mlp.experts.gate_up_proj"] == (128, 2048, 1536)
    assert ours["model.language_model.layers.47.mlp.experts.down_proj"] == (128, 768, 2048)
    assert ours["model.language_model.layers.47.mlp.gate.weight"] == (128, 2048)


def test_disk_estimate_counts_experts_in_their_format() -> None:
    """The full 235B-A22B (shapes from its config, nothing written): experts at QMoE int4 / int8 in the bundle and in the
    float copy the int4 path spills (og packs the experts while it makes the graph), the rest as for dense."""
    from builder_qwen3vl.bundle.disk_estimate import estimate_build_bytes
    from builder_qwen3vl.checkpoint.safetensors_index import TensorInfo

    cfg = Qwen3VLConfig.from_dict(reference_moe_config("235b-a22b"))
    shapes = expected_tensors(cfg.text, cfg.vision)
    ckpt = SimpleNamespace(tensors={n: TensorInfo(n, "BF16", s, Path("model.safetensors")) for n, s in shapes.items()})
    experts = sum(int(np.prod(s)) for n, s in shapes.items() if ".mlp.experts." in n)
    assert (sum(int(np.prod(s)) for s in shapes.values()), experts) == (235_670_022_896, 94 * 128 * 3 * 4096 * 1536)

    def estimate(precision: str, spill: bool, **extra: str) -> float:
        plan = make_plan(cfg, BuildOptions(input="in", output="out", precision=precision, extra_options=extra), lm_head_is_table=False)
        return estimate_build_bytes(ckpt, plan, spills_float_decoder=spill)[0] / 1e9

    # bundle ~147.5 GB; + the larger temporary: the vision export's ~2.9 GB (fp32 tower + qint8 copy, measured 2.68 GB
    # at the 30B-A3B shape, docs/benchmarks.md) or the ~171.4 GB float decoder copy; x 1.1 margin
    assert round(estimate("int4", False)) == 165 and round(estimate("int4", True)) == 351
    assert round(estimate("int4", False, moe_quant_type="int8")) == 290
    assert round(estimate("fp16", False)) == 520  # float16 graph: fp16 tower work copy ~1.15 GB


# ---------------------------------------------------------------- bad MoE checkpoints: one line, exit 2

@pytest.fixture(scope="module")
def small_moe_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("small_moe")
    write_moe_checkpoint(folder, tiny_moe_config(vocab_size=512, moe_intermediate_size=48, mlp_only_layers=(1,)), tokenizer=False)
    write_stub_tokenizer(folder)
    return folder


def _text(edit):
    def apply(ckpt: Path) -> None:
        config = json.loads((ckpt / "config.json").read_text())
        edit(config["text_config"])
        (ckpt / "config.json").write_text(json.dumps(config))
    return apply


def _weights(edit):
    def apply(ckpt: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(ckpt / "model.safetensors")
        edit(tensors)
        save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    return apply


EXPERTS_2 = "model.language_model.layers.2.mlp.experts."
MOE_ROWS = [
    ("top_k_over_experts", _text(lambda t: t.update(num_experts_per_tok=9)),
     "config.json: text_config num_experts_per_tok is 9, expected 1..num_experts (8)"),
    ("top_k_zero", _text(lambda t: t.update(num_experts_per_tok=0)), "text_config num_experts_per_tok is 0, expected 1..num_experts (8)"),
    ("no_experts_key", _text(lambda t: t.pop("num_experts")), "a Qwen3-VL MoE text_config needs num_experts (or num_local_experts)"),
    ("experts_not_int", _text(lambda t: t.update(num_experts="8")), "text_config num_experts is '8', expected an integer"),
    ("sparse_step_zero", _text(lambda t: t.update(decoder_sparse_step=0)), "text_config decoder_sparse_step is 0, expected at least 1"),
    ("mlp_only_layer_outside", _text(lambda t: t.update(mlp_only_layers=[1, 4])),
     "text_config mlp_only_layers [4] outside 0..3 (num_hidden_layers=4)"),
    ("expert_tensor_missing", _weights(lambda t: t.pop(EXPERTS_2 + "down_proj")),
     (f"weights lack tensor '{EXPERTS_2}down_proj' (expected shape [8, 48, 64] (released) or [8, 64, 48] (transformers5); "
      "layer 2 is a sparse MoE layer)")),
    ("expert_shapes_mixed", _weights(lambda t: t.update({EXPERTS_2 + "down_proj": t[EXPERTS_2 + "down_proj"].transpose(1, 2).contiguous()})),
     ("layer 2 experts: gate_up_proj [8, 64, 96], down_proj [8, 64, 48] fit no known layout for num_experts=8, hidden_size=64, "
      "moe_intermediate_size=48 (expected released: gate_up_proj [8, 64, 96], down_proj [8, 48, 64]; transformers5: "
      "gate_up_proj [8, 96, 64], down_proj [8, 64, 48])")),
    ("expert_count_wrong", _weights(lambda t: t.update({EXPERTS_2 + k: t[EXPERTS_2 + k][:4].clone() for k in ("gate_up_proj", "down_proj")})),
     "layer 2 experts: gate_up_proj [4, 64, 96], down_proj [4, 48, 64] fit no known layout"),
    ("router_missing", _weights(lambda t: t.pop("model.language_model.layers.0.mlp.gate.weight")),
     "weights lack tensor 'model.language_model.layers.0.mlp.gate.weight' (expected shape [8, 64])"),
    ("dense_layer_lacks_mlp", _weights(lambda t: t.pop("model.language_model.layers.1.mlp.up_proj.weight")),
     "weights lack tensor 'model.language_model.layers.1.mlp.up_proj.weight' (expected shape [128, 64])"),
]


@pytest.mark.parametrize("break_it,message", [r[1:] for r in MOE_ROWS], ids=[r[0] for r in MOE_ROWS])
def test_bad_moe_checkpoint(small_moe_template: Path, tmp_path: Path, capsys, break_it, message: str) -> None:
    import shutil

    ckpt = shutil.copytree(small_moe_template, tmp_path / "ckpt")
    break_it(ckpt)
    code, text = run_cli(capsys, "-i", ckpt, "-o", tmp_path / "bundle")
    line = the_error_line(text)
    print(line)
    assert code == 2 and message in line
    assert_no_leftovers(tmp_path)


def test_unknown_architecture_names_both(small_moe_template: Path, tmp_path: Path, capsys) -> None:
    import shutil

    ckpt = shutil.copytree(small_moe_template, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config.update(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe")
    (ckpt / "config.json").write_text(json.dumps(config))
    code, text = run_cli(capsys, "-i", ckpt, "-o", tmp_path / "bundle")
    assert code == 2 and the_error_line(text).endswith(
        "not a Qwen3-VL checkpoint (found Qwen3MoeForCausalLM; expected Qwen3VLForConditionalGeneration or "
        "Qwen3VLMoeForConditionalGeneration)")
