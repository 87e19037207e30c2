"""DeepStack decoder (og builder + our subclass) vs HF Qwen3-VL: prefill with image rows, then 3 decode steps.

HF runs language_model with the same main columns as inputs_embeds, the same 3D position ids
(under fixed_3d_text_rotary) and the DeepStack columns of the image rows as
visual_pos_masks + deepstack_visual_embeds; onnxruntime runs model.onnx alone.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from builder_qwen3vl.decoder import build as dec
from builder_qwen3vl import og_options
from builder_qwen3vl.ground.errors import InputError
from builder_qwen3vl.options import BuildOptions
from compare import cosine_and_top1, max_abs_diff
from compare import load_hf_model as load_hf
from text_helpers import NUM_LAYERS, hf_logits, make_steps, ort_logits, write_text_checkpoint

HIDDEN, DEEPSTACK, KV_HEADS, HEAD_DIM = 64, 3, 2, 32


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_checkpoint(tmp_path_factory.mktemp("ckpt_457"))


@pytest.fixture(scope="module")
def steps():
    return make_steps(HIDDEN, DEEPSTACK, batch=2, decode_steps=3)


@pytest.fixture(scope="module")
def hf_ref(ckpt: Path, steps) -> list[np.ndarray]:
    return hf_logits(load_hf(ckpt), steps, DEEPSTACK)


@pytest.fixture(scope="module")
def fp32_build(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dec.DecoderBuild:
    return dec.build_decoder(ckpt, tmp_path_factory.mktemp("dec_fp32"), "fp32")


def _run(build: dec.DecoderBuild, steps) -> list[np.ndarray]:
    io = np.float16 if build.io_dtype == "float16" else np.float32
    return ort_logits(build.path, steps, NUM_LAYERS, KV_HEADS, HEAD_DIM, io)


def test_fp32_matches_hf_with_deepstack(fp32_build, steps, hf_ref) -> None:
    got = _run(fp32_build, steps)
    per_step = [float(np.abs(r - g).max()) for r, g in zip(hf_ref, got)]
    scale = max(float(np.abs(r).max()) for r in hf_ref)
    print(f"fp32 DeepStack decoder max|logit diff| per step (prefill, 3 decodes): {per_step}; max|logit| {scale:.1f}")
    # og's fp32 graph vs HF: ~3e-5 on logits of magnitude ~45 (relative ~1e-6), with or without DeepStack.
    assert max(per_step) <= 1e-4


def test_without_deepstack_differs_from_hf(ckpt, steps, hf_ref, tmp_path: Path) -> None:
    build = dec.build_decoder(ckpt, tmp_path, "fp32", deepstack=False)
    assert not any("/model/deepstack/layers." in n.name for n in onnx.load(str(build.path), load_external_data=False).graph.node)
    diff = max_abs_diff(hf_ref, _run(build, steps))
    print(f"fp32 decoder built with deepstack=False: max|logit diff| vs HF {diff:.2f}")
    assert diff > 1.0  # measured ~38: the parity test above would catch a missing DeepStack


def test_graph_io_and_genai_config(fp32_build) -> None:
    model = onnx.load(str(fp32_build.path), load_external_data=False)
    inputs = {i.name: i for i in model.graph.input}
    dims = [d.dim_value or d.dim_param for d in inputs["inputs_embeds"].type.tensor_type.shape.dim]
    assert dims == ["batch_size", "sequence_length", (1 + DEEPSTACK) * HIDDEN]
    pos = [d.dim_value or d.dim_param for d in inputs["position_ids"].type.tensor_type.shape.dim]
    assert pos == [3, "batch_size", "sequence_length"]
    adds = [n for n in model.graph.node if n.name.startswith("/model/deepstack/") and n.op_type == "Add"]
    assert [n.name for n in adds] == [f"/model/deepstack/layers.{k}/Add" for k in range(1, DEEPSTACK + 1)]
    # og's own genai_config for this graph is handed back, not written: the bundle's has one writer.
    assert fp32_build.og_genai_config["model"]["decoder"]["inputs"]["inputs_embeds"] == "inputs_embeds"
    assert fp32_build.stream_width == 256
    assert not (fp32_build.path.parent / "genai_config.json").exists()
    assert (fp32_build.path.parent / "model.onnx.data").exists()
    assert (fp32_build.hidden_size, fp32_build.num_deepstack, fp32_build.num_layers) == (HIDDEN, DEEPSTACK, NUM_LAYERS)


def test_5x_config_format_builds_the_same_decoder(fp32_build, steps, tmp_path_factory) -> None:
    """transformers 5.x ``rope_parameters`` and 4.57 ``rope_scaling`` configs give the same graph numbers."""
    ckpt5 = write_text_checkpoint(tmp_path_factory.mktemp("ckpt_5x"), config_format="5.x")
    assert "rope_parameters" in json.loads((ckpt5 / "config.json").read_text())["text_config"]
    build5 = dec.build_decoder(ckpt5, tmp_path_factory.mktemp("dec_5x"), "fp32")
    np.testing.assert_array_equal(np.concatenate([x.ravel() for x in _run(build5, steps)]),
                                  np.concatenate([x.ravel() for x in _run(fp32_build, steps)]))


@pytest.mark.parametrize(("precision", "min_cosine"), [("fp16", 0.999), ("int4", 0.95)])
def test_reduced_precision_smoke(ckpt, steps, hf_ref, tmp_path: Path, precision: str, min_cosine: float) -> None:
    # og's deprecated int4_* spelling: must reach og as block_size / accuracy_level (checked below).
    extra = {"int4_block_size": 64, "int4_accuracy_level": 4} if precision == "int4" else {}
    og_options = BuildOptions(input=ckpt, output=tmp_path, precision=precision, extra_options=extra).extra_options
    build = dec.build_decoder(ckpt, tmp_path, precision, extra_options=og_options)
    got = _run(build, steps)
    cosine, top1 = cosine_and_top1(hf_ref, got)
    print(f"{precision} DeepStack decoder ({build.io_dtype} io) vs HF fp32: mean cosine {cosine:.5f}, top-1 agreement {top1:.2f}, "
          f"max|logit diff| {max_abs_diff(hf_ref, got):.3f}")
    # Random tiny weights have small logit margins, so top-1 is reported, not bounded; cosine bounds:
    # fp16 measured ~0.9999997, int4 (RTN, block 64, random weights) ~0.98.
    assert cosine >= min_cosine
    if precision == "int4":
        nbits = [n for n in onnx.load(str(build.path), load_external_data=False).graph.node if n.op_type == "MatMulNBits"]
        assert nbits and {onnx.helper.get_attribute_value(a) for n in nbits for a in n.attribute if a.name == "block_size"} == {64}


def test_spilling_before_quantizing_writes_the_same_files(ckpt, tmp_path: Path, monkeypatch) -> None:
    """The low-memory int4 path (float graph saved to disk, quantizer reads it back) changes nothing in the output."""
    plain = dec.build_decoder(ckpt, tmp_path / "plain", "int4")
    spills = []
    from builder_qwen3vl.decoder import model as deepstack_model

    real_spill = deepstack_model.spill_to_disk
    monkeypatch.setattr(deepstack_model, "spill_to_disk", lambda model, folder: spills.append(folder) or real_spill(model, folder))
    spilled = dec.build_decoder(ckpt, tmp_path / "spilled", "int4", spill_before_quantizing=True)
    assert len(spills) == 1 and not spills[0].exists()  # the float copy was made, and removed afterwards
    for name in ("model.onnx", "model.onnx.data"):
        assert (plain.path.parent / name).read_bytes() == (spilled.path.parent / name).read_bytes(), name
    assert plain.og_genai_config == spilled.og_genai_config
    assert sorted(p.name for p in spilled.path.parent.iterdir()) == sorted(p.name for p in plain.path.parent.iterdir())


def test_spilling_is_skipped_where_the_quantizer_cannot_read_spilled_weights(ckpt, tmp_path: Path, monkeypatch) -> None:
    """k_quant / rtn read weights with onnx.numpy_helper, which refuses absolute external-data paths: no spill there."""
    from builder_qwen3vl.decoder import model as deepstack_model

    spills = []
    monkeypatch.setattr(deepstack_model, "spill_to_disk", lambda model, folder: spills.append(folder) or model)
    build = dec.build_decoder(ckpt, tmp_path, "int4", extra_options={"algo_config": "k_quant"}, spill_before_quantizing=True)
    assert spills == [] and build.path.exists()


def test_int4_aliases_translate_and_reject_conflicts() -> None:
    assert og_options.translate_int4_aliases({"int4_block_size": "64", "fuse_qkv": "false"}) == {"block_size": "64", "fuse_qkv": "false"}
    with pytest.raises(ValueError, match="int4_block_size=64 conflicts with block_size=128"):
        og_options.translate_int4_aliases({"int4_block_size": "64", "block_size": "128"})


def test_build_decoder_rejects_exclude_embeds_false(ckpt, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="exclude_embeds must be true"):
        dec.build_decoder(ckpt, tmp_path, "fp32", extra_options={"exclude_embeds": "false"})


def test_og_extra_option_keys_read_from_og_source() -> None:
    keys = set(og_options.og_extra_option_keys())
    for key in ("block_size", "accuracy_level", "algo_config", "nodes_to_exclude", "is_symmetric", "exclude_embeds",
                "int4_block_size", "int4_accuracy_level", "int4_algo_config", "int4_nodes_to_exclude"):
        assert key in keys, key
    assert "hf_details" not in keys and "key" not in keys


# --- pins: og builder internals this module relies on. An og upgrade that changes them must fail here. ---

def test_og_pins_module_level_helpers() -> None:
    builder = dec.og_builder()
    for name in ("parse_extra_options", "set_io_dtype", "set_onnx_dtype", "create_model", "Qwen3VLTextModel"):
        assert hasattr(builder, name), name
    assert list(inspect.signature(builder.parse_extra_options).parameters)[:7] == [
        "model_name", "input_path", "output_dir", "precision", "execution_provider", "cache_dir", "extra_options"]
    assert list(inspect.signature(builder.set_io_dtype).parameters) == ["precision", "execution_provider", "extra_options"]
    assert list(inspect.signature(builder.set_onnx_dtype).parameters) == ["precision", "extra_options"]
    # build_decoder replays create_model's steps; og changing that sequence needs a look here.
    source = inspect.getsource(builder.create_model)
    order = [source.index(s) for s in ('hf_details = extra_options.pop("hf_details")', "set_io_dtype(", "set_onnx_dtype(",
                                       "onnx_model.make_model(", "onnx_model.save_model(", "onnx_model.make_genai_config(")]
    assert order == sorted(order)
    assert "Qwen3VLTextModel(config, io_dtype, onnx_dtype, execution_provider, cache_dir, extra_options)" in source
    # og 0.18 documents int4_* aliases but reads only the unprefixed names (hence translate_int4_aliases).
    assert "int4_block_size" not in inspect.getsource(dec.og_builder().check_extra_options)


def test_og_pins_model_class_internals() -> None:
    base = dec.og_builder().Qwen3VLTextModel
    assert list(inspect.signature(base.__init__).parameters) == [
        "self", "config", "io_dtype", "onnx_dtype", "ep", "cache_dir", "extra_options"]
    for method in ("make_layer", "make_inputs_and_outputs", "make_genai_config", "make_model", "save_model",
                   "make_split", "make_add", "make_cast", "make_hidden_state_shape"):
        assert callable(getattr(base, method, None)), method
    assert list(inspect.signature(base.make_layer).parameters) == ["self", "layer_id", "layer"]
    assert list(inspect.signature(base.make_genai_config).parameters) == ["self", "config", "extra_kwargs", "out_dir"]
    model_src = inspect.getsource(base.__mro__[-2].make_model)  # og's Model base class
    assert 'self.layernorm_attrs["root_input"] = "inputs_embeds"' in model_src
    layernorm_src = inspect.getsource(base.make_layernorm)
    # The residual flows through SkipLayerNorm output 3 into the next layer's root input.
    assert 'self.layernorm_attrs["root_input"] = output_3' in layernorm_src
    assert 'inputs = [root_input, skip_input, weight] if skip else [root_input, weight]' in layernorm_src
