"""``python -m builder_qwen3vl verify`` on real bundles of every precision and on deliberately broken ones.

Bundles come from one tiny random checkpoint (real tokenizer, hidden 64, D = 3 DeepStack blocks,
so the wide stream is (1 + 3) x 64 = 256). Broken bundles are copies with one thing changed;
each must fail with its own reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from builder_qwen3vl import build
from builder_qwen3vl.cli import main
from builder_qwen3vl.options import BuildOptions
from builder_qwen3vl.verify import verify_bundle

WIDTH, H = 256, 64


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("verify_ckpt"), tiny_config())


@pytest.fixture(scope="module")
def bundles(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verify_bundles")
    return {p: build(BuildOptions(input=ckpt, output=root / p, precision=p)) for p in ("fp32", "fp16")}


def run(capsys: pytest.CaptureFixture, *argv: str | Path) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    print("\n".join(lines))
    return code, lines


def error_line(lines: list[str]) -> str:
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    return errors[0]


def test_fp32_bundle_passes(bundles: dict[str, Path], capsys) -> None:
    code, lines = run(capsys, "verify", bundles["fp32"])
    assert code == 0
    text = "\n".join(lines)
    assert f"model.onnx: DeepStack wide stream (1 + 3) x H={H} = {WIDTH}, all 3 blocks wired" in text
    assert f"vision_encoder.onnx: pixel_values [N, 1536], image_grid_thw [I, 3] -> image_features [T, {WIDTH}]" in text
    assert "run (image): " in text and ", 64 image tokens, generated [" in text  # 256 x 256 test image -> 16 x 16 patches / 4
    assert "run (text): " in text
    assert "ok    video_preprocessor_config.json: 2.0 fps, 4..768 frames, pixels 4096..25165824, merge 2" in lines
    assert lines[-1] == f"verify {bundles['fp32']}: passed"


def test_build_with_verify_flag_int4(ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "int4"
    code, lines = run(capsys, "-i", ckpt, "-o", out, "-p", "int4", "--verify")
    assert code == 0
    assert f"verify {out}: passed" in lines
    assert any(line.startswith("ok    run (image): ") for line in lines)
    # the last line tells where the bundle is and how to run it
    assert lines[-1] == f"bundle verified: {out}; run it: python examples/chat.py -m {out} --image IMAGE"


def _og_runs(bundle: Path) -> str | None:
    """Independent of verify: og.Model + og.Generator on a text prompt. None if og generates, else og's error."""
    import numpy as np

    from builder_qwen3vl.runtime.og_run import greedy, load_model

    try:
        list(greedy(load_model(bundle), np.array([[9707, 11, 1879]], dtype=np.int32), max_new_tokens=2))
    except Exception as e:  # og raises RuntimeError from onnxruntime
        return str(e)
    return None


def test_fp16_bundle_on_cpu(bundles: dict[str, Path], capsys) -> None:
    """fp16 on CPU: og itself generates from the bundle (the builder's repeat_kv fix), and verify agrees."""
    og_error = _og_runs(bundles["fp16"])
    assert og_error is None, og_error
    code, lines = run(capsys, "verify", bundles["fp16"])
    assert any(f"inputs_embeds [B, S, {WIDTH}] float16" in line for line in lines)
    assert code == 0, lines
    code, lines = run(capsys, "verify", bundles["fp16"], "--static-only")
    assert code == 0 and "ok    run: skipped (--static-only)" in lines


# ---------------------------------------------------------------- broken bundles


def _edit_genai(bundle: Path, edit) -> None:
    path = bundle / "genai_config.json"
    doc = json.loads(path.read_text())
    edit(doc["model"])
    path.write_text(json.dumps(doc, indent=4))


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _swap_in_fp16_embeddings(bundle: Path, fp16: Path) -> None:
    for name in ("embeddings.onnx", "embeddings.onnx.data"):
        if (fp16 / name).exists():
            shutil.copy(fp16 / name, bundle / name)


def _unwire_first_deepstack_block(bundle: Path) -> None:
    """Make the layer-1 DeepStack Add read the residual twice: block 1 of inputs_embeds is then unused."""
    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    split = next(n for n in model.graph.node if n.op_type == "Split" and "inputs_embeds" in n.input)
    add = next(n for n in model.graph.node if split.output[1] in n.input)
    other = next(i for i in add.input if i != split.output[1])
    add.input[list(add.input).index(split.output[1])] = other
    onnx.save(model, str(bundle / "model.onnx"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN = [
    ("deleted_vision", lambda b, f: (b / "vision_encoder.onnx").unlink(),
     "vision_encoder.onnx: missing (named by genai_config.json model.vision.filename)"),
    ("deleted_external_data", lambda b, f: (b / "model.onnx.data").unlink(), "model.onnx.data: missing (external data of model.onnx)"),
    ("truncated_external_data", lambda b, f: _truncate(b / "model.onnx.data"), "model.onnx.data: truncated: model.onnx needs"),
    ("deleted_tokenizer", lambda b, f: (b / "tokenizer_config.json").unlink(), "tokenizer_config.json: missing (og's tokenizer needs it)"),
    ("hidden_size_wrong", lambda b, f: _edit_genai(b, lambda m: m["decoder"].update(hidden_size=320)),
     f"vision_encoder.onnx output 'image_features': dim 1 is {WIDTH}, expected 320"),
    ("model_type_wrong", lambda b, f: _edit_genai(b, lambda m: m.update(type="qwen3vl")),
     "genai_config.json: model.type is 'qwen3vl', expected 'qwen3_vl'"),
    ("pad_token_zero", lambda b, f: _edit_genai(b, lambda m: m.update(pad_token_id=0)), "model.pad_token_id is 0"),
    ("dtype_mismatch", _swap_in_fp16_embeddings,
     "embeddings.onnx input 'image_features' is float16 but vision_encoder.onnx writes float32"),
    ("deepstack_unwired", lambda b, f: _unwire_first_deepstack_block(b),
     "model.onnx: DeepStack block(s) 1 of inputs_embeds are never used"),
    ("tokenizer_corrupt", lambda b, f: (b / "tokenizer.json").write_text("{ not json"), "run: og failed while loading the bundle"),
    ("deleted_video_config", lambda b, f: (b / "video_preprocessor_config.json").unlink(),
     "video_preprocessor_config.json: missing (the checkpoint's video settings; rebuild the bundle)"),
    ("video_merge_size_wrong", lambda b, f: _edit_json(b / "video_preprocessor_config.json", lambda d: d.update(merge_size=1)),
     "video_preprocessor_config.json: merge_size is 1 but genai_config.json model.vision.spatial_merge_size is 2"),
]


@pytest.mark.parametrize("break_it,reason", [r[1:] for r in BROKEN], ids=[r[0] for r in BROKEN])
def test_broken_bundle(bundles: dict[str, Path], tmp_path: Path, capsys, break_it, reason: str) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["fp32"], bundle)
    break_it(bundle, bundles["fp16"])
    code, lines = run(capsys, "verify", bundle)
    assert code == 1
    line = error_line(lines)
    assert line.startswith(f"error: verify {bundle}: ")
    assert reason in line
    assert any(line.startswith(f"verify {bundle}: FAILED (") for line in lines)


def test_hidden_size_not_a_multiple_of_h(bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["fp32"], bundle)
    _edit_genai(bundle, lambda m: m["decoder"].update(hidden_size=250))
    report = verify_bundle(bundle, run=False)
    assert f"genai_config.json: decoder.hidden_size 250 is not a multiple of the text hidden size H={H} " \
           f"(from model.onnx's final norm); expected (1 + D) * {H}" in report.failures


def test_verify_missing_folder_is_usage_error(tmp_path: Path, capsys) -> None:
    code, lines = run(capsys, "verify", tmp_path / "nope")
    assert code == 2
    assert error_line(lines) == f"error: verify {tmp_path / 'nope'}: expected a bundle folder (with genai_config.json), found nothing"
