"""The bounded-memory exporters write the same bytes as the whole-model ones.

The vision export keeps its weights out of memory (placeholders in the ONNX graph, real bytes on disk, one tensor
at a time: vision/placeholders.py), the embeddings step reads, converts and quantizes the table a block of rows at
a time, and a large checkpoint's embeddings and vision steps run in child processes. None of that may change a
byte of a bundle:

- tiny bundles (fp32, fp16, int4 with the qint8 vision default, an untied int4 table, vision_precision int4 and
  int8, int4 with the steps in child processes) are compared with the bundles of the package at
  ``REFERENCE_COMMIT``, the last commit before these exporters, built in a subprocess. The tiny tensors are below
  the size at which the exporters hold a placeholder, so the in-process builds here lower that size (and the row
  block of the table) until nearly every tensor goes through the bounded path.
- the placeholder writer against onnx.save_model, and row blocks against one block, without git.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from bundle_diff import bundle_differences
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
# The last commit before the bounded exporters; change it only together with a deliberate change of the bytes.
REFERENCE_COMMIT = "72565cff9d555cc161d02043750b6436df0751b1"

# case -> (checkpoint, precision, vision_precision, steps in child processes)
CASES = {
    "fp32": ("tied", "fp32", None, False),
    "fp16": ("tied", "fp16", None, False),
    "int4": ("tied", "int4", None, False),
    "int4-untied": ("untied", "int4", None, False),
    "int4-vision-int4": ("tied", "int4", "int4", False),
    "int4-vision-int8": ("tied", "int4", "int8", False),
    "int4-child-processes": ("untied", "int4", None, True),
}

_BUILD_ALL = """
import json, sys
from builder_qwen3vl import BuildOptions, build
for name, (ckpt, out, precision, vision) in json.loads(sys.argv[1]).items():
    build(BuildOptions(input=ckpt, output=out, precision=precision, vision_precision=vision))
"""


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    root = tmp_path_factory.mktemp("bounded_ckpts")
    return {"tied": write_checkpoint(root / "tied", tiny_config()),
            "untied": write_checkpoint(root / "untied", tiny_config(tie_word_embeddings=False))}


@pytest.fixture(scope="module")
def reference_bundles(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case built by the package at REFERENCE_COMMIT (git archive), in one subprocess."""
    root = tmp_path_factory.mktemp("reference")
    try:
        archive = subprocess.run(["git", "archive", REFERENCE_COMMIT, "builder_qwen3vl", "configs"], cwd=REPO,
                                 check=True, capture_output=True, timeout=120).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"the reference package needs git and commit {REFERENCE_COMMIT[:7]}: {e}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root / "package", filter="data")
    jobs = {name: (str(ckpts[kind]), str(root / name), precision, vision)
            for name, (kind, precision, vision, _) in CASES.items()}
    import json

    res = subprocess.run([sys.executable, "-c", _BUILD_ALL, json.dumps(jobs)], cwd=root / "package",
                         capture_output=True, text=True, timeout=1800, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return {name: root / name for name in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_bundle_bytes_unchanged(case: str, ckpts: dict[str, Path], reference_bundles: dict[str, Path],
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    from builder_qwen3vl import BuildOptions, build
    from builder_qwen3vl.embeddings import table
    from builder_qwen3vl.vision import placeholders

    kind, precision, vision, children = CASES[case]
    if children:  # the embeddings and vision steps in child processes, as for a checkpoint of >= 1 GiB
        monkeypatch.setattr(sys.modules["builder_qwen3vl.decoder.build"], "ISOLATE_DECODER_BYTES", 0)
    else:  # every tensor of >= 1 KiB a placeholder, the table in blocks of a few rows
        monkeypatch.setattr(placeholders, "INLINE_BELOW", 1024)
        monkeypatch.setattr(table, "ROWS_PER_BLOCK_BYTES", 4096)
    with caplog.at_level(logging.INFO, logger="builder_qwen3vl"):
        # The reference package predates the CPU default of 128-wide int4 blocks; the exporters are compared at its 32.
        blocks = {"block_size": "32", "qmoe_block_size": "32"} if precision == "int4" else {}
        ours = build(BuildOptions(input=ckpts[kind], output=tmp_path / case, precision=precision, vision_precision=vision,
                                  extra_options=blocks))
    differences = bundle_differences(reference_bundles[case], ours)
    files = sorted(p.name for p in ours.iterdir())
    print(f"{case}: {len(files)} files, {sum((ours / f).stat().st_size for f in files)} bytes, {len(differences)} differ")
    assert differences == []
    if case == "int4-untied":  # progress a person can read: what, k of N, bytes
        text = caplog.text
        assert "embeddings: quantizing the table (int4): 151936 of 151936 rows" in text
        assert "vision: reading the weights into the traced graph: " in text and " tensors, " in text
        assert "vision: quantizing MatMul weights (QInt8 per channel): " in text
        assert "vision: writing vision_encoder.onnx: " in text


# ---------------------------------------------------------------- without git


def _model(store, monkeypatch: pytest.MonkeyPatch) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(the real model, the same with its large tensors as placeholders)."""
    from builder_qwen3vl.vision import placeholders

    monkeypatch.setattr(placeholders, "INLINE_BELOW", 1024)
    rng = np.random.default_rng(0)
    arrays = {"w_big": rng.standard_normal((64, 48)).astype(np.float32), "w_small": np.ones((4, 4), np.float32),
              "w_half": rng.standard_normal((40, 40)).astype(np.float16), "w_int8": rng.integers(-9, 9, (300, 7), np.int8)}
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    inits[0].doc_string = "a tensor with fields after raw_data"
    inits[2].data_location = TensorProto.DEFAULT  # set explicitly, as onnx.load leaves a tensor it read from a file
    nodes = [helper.make_node("MatMul", ["x", "w_big"], ["y"], name="mm"), helper.make_node("Identity", ["w_small"], ["s"]),
             helper.make_node("Identity", ["w_half"], ["h"]), helper.make_node("Identity", ["w_int8"], ["i"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info(n, t, None) for n, t in
                               (("y", 1), ("s", 1), ("h", 10), ("i", 3))], inits, doc_string="after initializers")
    real = helper.make_model(graph, producer_name="test", opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(real, {"k": "v"})
    held = onnx.ModelProto()
    held.CopyFrom(real)
    for tensor in held.graph.initializer:
        if len(tensor.raw_data) >= placeholders.INLINE_BELOW:
            data = tensor.raw_data
            tensor.raw_data = store.add(placeholders.Computed(lambda data=data: np.frombuffer(data, np.uint8), len(data)))
    return real, held


def test_placeholder_model_saves_as_onnx_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from builder_qwen3vl.vision.placeholders import WeightStore

    store = WeightStore()
    real, held = _model(store, monkeypatch)
    assert sum(store.tensor_source(t) is not None for t in held.graph.initializer) == 3
    assert len(held.SerializeToString()) < len(real.SerializeToString())
    onnx.save_model(real, tmp_path / "onnx.onnx")
    store.save(held, tmp_path / "ours.onnx")
    assert (tmp_path / "ours.onnx").read_bytes() == (tmp_path / "onnx.onnx").read_bytes()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    real2, held2 = onnx.ModelProto(), onnx.ModelProto()
    real2.CopyFrom(real)
    held2.CopyFrom(held)
    onnx.save_model(real2, tmp_path / "a" / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=1024)
    store.save(held2, tmp_path / "b" / "m.onnx", external_data="m.onnx.data", size_threshold=1024)
    assert bundle_differences(tmp_path / "a", tmp_path / "b") == []

    # Read back (as onnx.load with its external data would), values through the store, saved again in one file.
    loaded = store.load(tmp_path / "b" / "m.onnx")
    with store.readable():
        got = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    from builder_qwen3vl.vision.placeholders import _ORIGINAL_TO_ARRAY

    assert onnx.numpy_helper.to_array is _ORIGINAL_TO_ARRAY  # the hook is gone after the block
    for tensor in real.graph.initializer:
        np.testing.assert_array_equal(got[tensor.name], numpy_helper.to_array(tensor))
    store.save(loaded, tmp_path / "again.onnx")
    expected = onnx.load(str(tmp_path / "a" / "m.onnx"))  # the external tensors loaded: DEFAULT location, set
    onnx.save_model(expected, tmp_path / "expected.onnx")
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "expected.onnx").read_bytes()


def test_table_row_blocks_give_the_bytes_of_one_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """int4 codes and zero points are packed two to a byte: row blocks must not shift them (odd vocabulary, an odd
    number of quantization blocks per row)."""
    from builder_qwen3vl.embeddings import table
    from builder_qwen3vl.embeddings.export import export_embeddings

    weights = torch.randn(1001, 96, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    cases = [("int4", {"is_symmetric": False}), ("int4", {"io_dtype": "float16"}), ("fp16", {}), ("fp32", {})]
    for rows_bytes, folder in ((1 << 40, "one"), (1000, "blocks")):
        monkeypatch.setattr(table, "ROWS_PER_BLOCK_BYTES", rows_bytes)
        for i, (precision, kwargs) in enumerate(cases):
            export_embeddings(weights, 7, 2, tmp_path / folder / str(i) / "embeddings.onnx", precision, **kwargs)
    for i in range(len(cases)):
        assert bundle_differences(tmp_path / "one" / str(i), tmp_path / "blocks" / str(i)) == [], cases[i]
