"""genai_config.json and processor_config.json: filled from the checkpoint, accepted by og's parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder_qwen3vl.checkpoint.reader import read_checkpoint
from builder_qwen3vl.checkpoint.config import Qwen3VLConfig
from builder_qwen3vl.ground.errors import InputError
from builder_qwen3vl.bundle.genai_config import make_genai_config, make_processor_config, write_json
from builder_qwen3vl.options import BuildOptions, parse_extra_options
from builder_qwen3vl.plan import DEFAULT_INTRA_OP_NUM_THREADS, DEFAULT_MAX_LENGTH, make_plan, resolve_max_length
from builder_qwen3vl.testing.checkpoints import reference_config, reference_json


def _genai(cfg: Qwen3VLConfig, ep: str = "cpu", og: dict | None = None, **extra: str) -> dict:
    options = BuildOptions(input=Path("in"), output=Path("out"), execution_provider=ep, extra_options=extra)
    return make_genai_config(cfg, make_plan(cfg, options), og)


def _none_paths(node, path=""):
    if node is None:
        yield path
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _none_paths(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _none_paths(v, f"{path}[{i}]")


@pytest.fixture(scope="module")
def cfg_2b() -> Qwen3VLConfig:
    return Qwen3VLConfig.from_dict(
        reference_config("2b"),
        generation=reference_json("qwen3-vl-instruct.generation_config.json"),
        preprocessor=reference_json("qwen3-vl-preprocessor_config.json"),
    )


def test_genai_config_fields_for_2b(cfg_2b: Qwen3VLConfig) -> None:
    doc = _genai(cfg_2b)
    assert not list(_none_paths(doc)), "template placeholders left unfilled"
    model = doc["model"]
    assert model["type"] == "qwen3_vl"
    assert (model["bos_token_id"], model["pad_token_id"]) == (151643, 151643)  # pad 0 would mask token "!"
    assert model["eos_token_id"] == [151645, 151643]
    assert (model["image_token_id"], model["vision_start_token_id"], model["video_token_id"]) == (151655, 151652, 151656)
    assert model["context_length"] == 262144 and model["vocab_size"] == 151936
    dec = model["decoder"]
    assert dec["hidden_size"] == 4 * 2048  # (1 + D) * H carries DeepStack
    assert (dec["head_size"], dec["num_attention_heads"], dec["num_key_value_heads"], dec["num_hidden_layers"]) == (128, 16, 8, 28)
    assert model["vision"]["inputs"] == {"pixel_values": "pixel_values", "image_grid_thw": "image_grid_thw"}
    assert (model["vision"]["spatial_merge_size"], model["vision"]["patch_size"]) == (2, 16)
    assert model["vision"]["config_filename"] == "processor_config.json"
    assert [model[k]["filename"] for k in ("vision", "embedding", "decoder")] == [
        "vision_encoder.onnx", "embeddings.onnx", "model.onnx"]
    search = doc["search"]  # generation_config.json defaults
    assert (search["do_sample"], search["top_k"], search["top_p"], search["temperature"]) == (True, 20, 0.8, 0.7)


@pytest.mark.parametrize("ep,expected", [("cpu", []), ("cuda", [{"cuda": {}}]), ("dml", [{"dml": {}}]), ("webgpu", [{"webgpu": {}}])])
def test_provider_options_on_every_session(cfg_2b: Qwen3VLConfig, ep: str, expected: list) -> None:
    model = _genai(cfg_2b, ep)["model"]
    for section in ("decoder", "embedding", "vision"):
        assert model[section]["session_options"]["provider_options"] == expected


def test_og_decoder_section_wins(cfg_2b: Qwen3VLConfig) -> None:
    og = {"model": {"decoder": {"inputs": {"inputs_embeds": "x"}, "session_options": {"log_id": "og"}}},
          "search": {"past_present_share_buffer": False}}
    doc = _genai(cfg_2b, "cpu", og)
    assert doc["model"]["decoder"]["inputs"] == {"inputs_embeds": "x"}
    assert doc["model"]["decoder"]["session_options"]["log_id"] == "og"
    assert doc["search"]["past_present_share_buffer"] is False


def test_processor_config_from_checkpoint(cfg_2b: Qwen3VLConfig) -> None:
    doc = make_processor_config(cfg_2b)
    assert not list(_none_paths(doc))
    ops = {t["operation"]["type"]: t["operation"].get("attrs", {}) for t in doc["processor"]["transforms"]}
    assert doc["processor"]["name"] == "qwen3_vl_image_processor"
    assert list(ops) == ["DecodeImage", "ConvertRGB", "Resize", "Rescale", "Normalize", "PatchImage"]
    assert (ops["Resize"]["min_pixels"], ops["Resize"]["max_pixels"]) == (65536, 16777216)
    assert ops["Normalize"]["qwen3_vl"] == 1  # without it og swaps R and B
    assert ops["Normalize"]["mean"] == [0.5] * 3 and ops["Normalize"]["std"] == [0.5] * 3
    assert (ops["PatchImage"]["patch_size"], ops["PatchImage"]["temporal_patch_size"], ops["PatchImage"]["merge_size"]) == (16, 2, 2)


def test_og_parser_accepts_written_config(small_ckpt: Path, tmp_path: Path) -> None:
    """og's own JSON parser rejects unknown keys: load what we write with og.Config."""
    import onnxruntime_genai as og

    ckpt = read_checkpoint(small_ckpt)
    write_json(tmp_path / "genai_config.json", _genai(ckpt.config))
    write_json(tmp_path / "processor_config.json", make_processor_config(ckpt.config))
    og.Config(str(tmp_path))  # raises on any unknown or mistyped field
    assert json.loads((tmp_path / "genai_config.json").read_text())["model"]["decoder"]["hidden_size"] == 256


def test_og_parser_would_catch_a_bad_field(small_ckpt: Path, tmp_path: Path) -> None:
    """The check above can fail: og rejects a field it does not know."""
    import onnxruntime_genai as og

    doc = _genai(read_checkpoint(small_ckpt).config)
    doc["model"]["vision"]["deepstack_width"] = 3
    write_json(tmp_path / "genai_config.json", doc)
    with pytest.raises(Exception, match="Unknown value"):
        og.Config(str(tmp_path))


def test_run_time_defaults_on_every_session(cfg_2b: Qwen3VLConfig) -> None:
    """og 0.18 gives a session hardware_concurrency()/2 threads unless told (1 on a 2-core VM); 0 is passed
    on to onnxruntime (every physical core). max_length sizes og's KV buffer: 8,192, not 262,144."""
    doc = _genai(cfg_2b)
    for section in ("decoder", "embedding", "vision"):
        assert doc["model"][section]["session_options"]["intra_op_num_threads"] == DEFAULT_INTRA_OP_NUM_THREADS == 0
    assert doc["search"]["max_length"] == DEFAULT_MAX_LENGTH == 8192
    pinned = _genai(cfg_2b, intra_op_num_threads="3", max_length="4096")
    assert {pinned["model"][s]["session_options"]["intra_op_num_threads"] for s in ("decoder", "embedding", "vision")} == {3}
    assert pinned["search"]["max_length"] == 4096


def test_max_length_is_capped_by_the_context(cfg_2b: Qwen3VLConfig, small_ckpt: Path) -> None:
    small = read_checkpoint(small_ckpt).config  # context 4,096 < the default 8,192
    assert resolve_max_length(None, small) == small.text.max_position_embeddings == 4096
    with pytest.raises(InputError, match=r"max_length=300000: more than the checkpoint's context length 262144"):
        resolve_max_length(300000, cfg_2b)


@pytest.mark.parametrize("item, message", [
    ("intra_op_num_threads=-1", "intra_op_num_threads=-1 is not an integer >= 0"),
    ("intra_op_num_threads=all", "intra_op_num_threads=all is not an integer >= 0"),
    ("max_length=0", "max_length=0 is not an integer >= 1"),
])
def test_run_time_options_reject_bad_values(item: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_extra_options([item])
