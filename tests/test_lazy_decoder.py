"""model.onnx built from the checkpoint a module at a time, int4 MatMuls quantized as they are written.

- The bytes are og's: each tiny checkpoint (dense tied / untied, sharded, fp16-stored, 5.x config; MoE with the
  ambiguous released expert layout) at fp32, fp16 and int4 (and int4 settings) gives the very model.onnx and
  model.onnx.data of og's own path (``lazy_weights=False``: og's ``from_pretrained`` of the whole model, og's
  ``to_nbits`` over the whole graph). Weights are converted in small blocks here, so the block code runs.
- The parameters read are those ``from_pretrained`` loads (dtype, tie, expert orientation), bit for bit.
- Memory does not grow with depth: a counter of the checkpoint tensors alive (lazy_weights.LIVE) shows at
  most one layer's tensors at once, and the same peak at depth 8 as at depth 2. Its negative control keeps
  og's references to the parameters (as og's own path does) and sees every layer alive at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from builder_qwen3vl.decoder import build as dec
from builder_qwen3vl.decoder import lazy_weights, stream_quant
from builder_qwen3vl.decoder.lazy_weights import CheckpointParams, LiveTensors, hf_skeleton
from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint
from builder_qwen3vl.testing.moe_checkpoints import tiny_moe_config, write_moe_checkpoint

VOCAB = 2048


def _dense_tied(folder: Path) -> Path:
    return write_checkpoint(folder, tiny_config(vocab_size=VOCAB), dtype="bf16")


def _dense_untied(folder: Path) -> Path:
    cfg = tiny_config(vocab_size=VOCAB, num_hidden_layers=3, tie_word_embeddings=False)
    return write_checkpoint(folder, cfg, dtype="fp16", config_format="5.x", shards=3)


def _moe(folder: Path) -> Path:
    # H == 2I: transformers cannot orient the released gate_up_proj from its shape (checkpoint/moe_layout.py); layer 1 dense.
    cfg = tiny_moe_config(vocab_size=VOCAB, num_hidden_layers=4, vision_depth=4, deepstack_visual_indexes=(0, 1, 2),
                          num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=(1,))
    return write_moe_checkpoint(folder, cfg, expert_layout="released")


WRITERS = {"dense_tied": _dense_tied, "dense_untied": _dense_untied, "moe": _moe}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: write(tmp_path_factory.mktemp(name) / "ckpt") for name, write in WRITERS.items()}


def _build_both(ckpt: Path, out: Path, precision: str, monkeypatch, **extra) -> tuple[dec.DecoderBuild, dec.DecoderBuild, LiveTensors]:
    og = dec.build_decoder(ckpt, out / "og", precision, lazy_weights=False, extra_options=dict(extra))
    live = LiveTensors()
    monkeypatch.setattr(lazy_weights, "LIVE", live)
    monkeypatch.setattr(lazy_weights, "BLOCK_BYTES", 4096)  # many blocks per weight even at this size
    lazy = dec.build_decoder(ckpt, out / "lazy", precision, extra_options=dict(extra))
    return og, lazy, live


def _assert_same_files(og: dec.DecoderBuild, lazy: dec.DecoderBuild) -> None:
    for name in ("model.onnx", "model.onnx.data"):
        a, b = (og.path.parent / name).read_bytes(), (lazy.path.parent / name).read_bytes()
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        assert a == b, f"{name}: {len(a)} / {len(b)} bytes, first difference at byte {first}"
    assert og.og_genai_config == lazy.og_genai_config
    assert sorted(p.name for p in og.path.parent.iterdir()) == sorted(p.name for p in lazy.path.parent.iterdir())


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int4"])
@pytest.mark.parametrize("case", list(WRITERS))
def test_lazy_build_writes_ogs_bytes(ckpts, case: str, precision: str, tmp_path: Path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="builder_qwen3vl.decoder")
    og, lazy, live = _build_both(ckpts[case], tmp_path, precision, monkeypatch)
    _assert_same_files(og, lazy)
    size = (lazy.path.parent / "model.onnx.data").stat().st_size
    print(f"{case} {precision}: model.onnx + {size} bytes of data identical; {live.reads} checkpoint reads, "
          f"peak {live.peak_bytes} bytes of checkpoint tensors alive")
    assert live.reads > 0 and live.peak_layers == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("reading" in m and "one module at a time" in m for m in messages)
    assert any(f"layer {lazy.num_layers} of {lazy.num_layers} made" in m for m in messages)
    assert any(m.startswith("decoder: writing model.onnx.data:") for m in messages)
    if precision == "int4":
        assert any("each quantized as it is written" in m for m in messages)


@pytest.mark.parametrize("extra", [
    {"is_symmetric": "false"},
    {"block_size": "128", "accuracy_level": "1"},
    {"accuracy_level": "0", "nodes_to_exclude": "/lm_head/MatMul,/model/layers.0/attn/q_proj/MatMul"},
    {"algo_config": "k_quant"},  # not streamed: og's quantizer over the whole model, in memory (logged)
], ids=["asymmetric", "block128_level1", "exclusions", "k_quant"])
def test_int4_settings_write_ogs_bytes(ckpts, extra: dict, tmp_path: Path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="builder_qwen3vl.decoder")
    og, lazy, _ = _build_both(ckpts["dense_untied"], tmp_path, "int4", monkeypatch, **extra)
    _assert_same_files(og, lazy)
    streamed = any("each quantized as it is written" in r.getMessage() for r in caplog.records)
    assert streamed == ("algo_config" not in extra)


def test_moe_qmoe_settings_write_ogs_bytes(ckpts, tmp_path: Path, monkeypatch) -> None:
    og, lazy, _ = _build_both(ckpts["moe"], tmp_path, "int4", monkeypatch, moe_quant_type="int8", qmoe_block_size=64)
    _assert_same_files(og, lazy)


def test_spill_fallback_writes_ogs_bytes(ckpts, tmp_path: Path, monkeypatch) -> None:
    """spill_before_quantizing: og's quantizer reading a float copy the lazy tensors wrote to disk."""
    from builder_qwen3vl.decoder import model as deepstack_model

    spills = []
    real_spill = deepstack_model.spill_to_disk
    monkeypatch.setattr(deepstack_model, "spill_to_disk", lambda model, folder: spills.append(folder) or real_spill(model, folder))
    og = dec.build_decoder(ckpts["dense_tied"], tmp_path / "og", "int4", lazy_weights=False)
    spilled = dec.build_decoder(ckpts["dense_tied"], tmp_path / "spilled", "int4", spill_before_quantizing=True)
    assert len(spills) == 1 and not spills[0].exists()
    _assert_same_files(og, spilled)


# --- the parameters are from_pretrained's ------------------------------------------------------------------

@pytest.mark.parametrize("case", list(WRITERS))
def test_parameters_are_those_from_pretrained_loads(ckpts, case: str) -> None:
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

    from builder_qwen3vl.checkpoint.moe_layout import read_expert_layouts
    from builder_qwen3vl.decoder.moe_experts import fix_ambiguous_experts
    from builder_qwen3vl.decoder.moe_model import expert_orientation

    folder = ckpts[case]
    cls = Qwen3VLMoeForConditionalGeneration if case == "moe" else Qwen3VLForConditionalGeneration
    skeleton = hf_skeleton(cls, folder)
    oriented = expert_orientation(folder, skeleton, skeleton.config.text_config) if case == "moe" else {}
    params = CheckpointParams(folder, skeleton, oriented)
    hf = cls.from_pretrained(folder)
    if case == "moe":
        fix_ambiguous_experts(hf, folder, read_expert_layouts(folder, hf.config.text_config))
    names = [n for n, _ in hf.named_parameters(remove_duplicate=False) if not n.startswith("model.visual.")]
    params.check(names)
    for name, param in hf.named_parameters(remove_duplicate=False):
        if name.startswith("model.visual."):
            continue
        got = params.read(name)
        assert got.dtype == param.dtype and got.shape == param.shape and torch.equal(got, param.detach()), name
    print(f"{case}: {len(names)} parameters equal to from_pretrained's ({ {p.dtype for p in hf.parameters()} })")


def test_checkpoints_the_reader_cannot_follow_keep_ogs_loader(tmp_path: Path, monkeypatch, caplog) -> None:
    """A text tensor missing from the checkpoint (HF initialises it randomly): og's loader, said in the log."""
    from safetensors.torch import load_file, save_file

    folder = _dense_tied(tmp_path / "ckpt")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.language_model.norm.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    live = LiveTensors()
    monkeypatch.setattr(lazy_weights, "LIVE", live)
    caplog.set_level(logging.INFO, logger="builder_qwen3vl.decoder")
    dec.build_decoder(folder, tmp_path / "out", "fp32")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("og's loader reads the whole checkpoint into memory (the checkpoint stores no tensor for parameter "
               "model.language_model.norm.weight)" in m for m in warnings), warnings
    assert live.reads == 0


# --- memory does not grow with depth ------------------------------------------------------------------------

def _deep(folder: Path, layers: int) -> Path:
    cfg = tiny_config(vocab_size=VOCAB, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                      mrope_section=(12, 10, 10), intermediate_size=768, num_hidden_layers=layers,
                      deepstack_visual_indexes=(0, 1), tie_word_embeddings=False)
    return write_checkpoint(folder, cfg, dtype="bf16")


def _peak(ckpt: Path, out: Path, precision: str, monkeypatch) -> LiveTensors:
    live = LiveTensors()
    monkeypatch.setattr(lazy_weights, "LIVE", live)
    dec.build_decoder(ckpt, out, precision)
    return live


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_checkpoint_tensors_alive_do_not_grow_with_depth(tmp_path: Path, monkeypatch, precision: str) -> None:
    shallow, deep = _deep(tmp_path / "d2", 2), _deep(tmp_path / "d8", 8)
    a = _peak(shallow, tmp_path / "b2", precision, monkeypatch)
    b = _peak(deep, tmp_path / "b8", precision, monkeypatch)
    stored = lazy_weights.read_checkpoint_tensors(deep)
    layer_bytes = sum(2 * t.numel() for t in [torch.empty(info.shape, device="meta") for name, info in stored.items()
                                               if name.startswith("model.language_model.layers.0.")])
    print(f"{precision}: peak checkpoint tensors alive: depth 2 {a.peak_bytes} bytes ({a.peak_layers} layer), "
          f"depth 8 {b.peak_bytes} bytes ({b.peak_layers} layer); one layer is {layer_bytes} bytes; reads {a.reads} / {b.reads}")
    assert a.peak_layers == b.peak_layers == 1
    assert a.peak_bytes == b.peak_bytes
    assert b.peak_bytes <= max(layer_bytes, 2 * VOCAB * 256)  # a layer, or the lm_head alone
    assert b.reads > a.reads


def test_depth_test_sees_retained_layers(tmp_path: Path, monkeypatch) -> None:
    """Negative control: initializers that keep og's references to the parameters (og's own path) hold every layer."""
    monkeypatch.setattr(lazy_weights.LazyWeights, "defer", lambda self, value, tensor, to, raw: None)
    live = _peak(_deep(tmp_path / "d8", 8), tmp_path / "b8", "fp16", monkeypatch)
    print(f"og's references kept: {live.peak_layers} layers alive at once, peak {live.peak_bytes} bytes")
    assert live.peak_layers == 8


# --- pins: og internals this path stands in for -------------------------------------------------------------

def test_og_pins_what_the_lazy_path_replaces() -> None:
    import inspect

    base = dec.og_builder().Qwen3VLTextModel.__mro__[-2]  # og's Model
    make_initializer = inspect.getsource(base.make_initializer)
    # og_initializer runs og's make_initializer on a stand-in that has only these two:
    assert {m for m in __import__("re").findall(r"self\.(\w+)", make_initializer)} == {"make_value", "model"}
    assert "self.model.graph.register_initializer(value)" in make_initializer
    save = inspect.getsource(base.save_model)
    assert "model = self.to_nbits()" in save and "model.graph.sort()" in save and "size_threshold_bytes=0" in save
    to_nbits = inspect.getsource(base.to_nbits)
    assert "algo_config = None" in to_nbits and "model=ir.to_proto(self.model)" in to_nbits
    load = inspect.getsource(base.load_weights)
    assert "auto_class.from_pretrained(" in load and "self.model_name_or_path" in load
    assert stream_quant.NBITS_DTYPES == {"INT4", "UINT4", "INT8", "UINT8"}


def test_transformers_pins_what_the_skeleton_repeats() -> None:
    """hf_skeleton / CheckpointParams repeat these steps of transformers 5's from_pretrained; a change must fail here."""
    import inspect

    from transformers import PreTrainedModel, core_model_loading, modeling_utils

    assert list(inspect.signature(modeling_utils._get_dtype).parameters)[:6] == [
        "dtype", "checkpoint_files", "config", "sharded_metadata", "state_dict", "weights_only"]
    assert list(inspect.signature(PreTrainedModel.get_init_context).parameters) == [
        "dtype", "is_quantized", "_is_ds_init_called", "allow_all_kernels", "config"]
    source = inspect.getsource(PreTrainedModel.from_pretrained)
    for step in ('dtype = "auto"', "config, dtype = _get_dtype(",
                 "model_init_context = cls.get_init_context(dtype, is_quantized, _is_ds_init_called, allow_all_kernels, config)",
                 "dtype_plan = model._get_dtype_plan(dtype)", "weight_conversions = get_model_conversion_mapping(model, key_mapping, hf_quantizer)"):
        assert step in source, step
    loading = inspect.getsource(core_model_loading.convert_and_load_state_dict_in_model)
    assert "rename_source_key(\n            original_key, renamings, converters, base_model_prefix, meta_model_state_dict" in loading
    assert "_dtype = empty_param.dtype" in loading  # each parameter loads in its own (the model's) dtype
    assert "tensor = tensor.to(device=device, dtype=dtype)" in inspect.getsource(core_model_loading._materialize_copy)
