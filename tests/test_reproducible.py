"""Same checkpoint, same options -> byte-identical bundle.

Each precision is built twice, and the second build reads a copy of the checkpoint at another
path and writes to an output folder with another name, so neither the input path nor the
staging folder's random name may leak into any file. On a difference the assertion names the
file, the first differing byte and the ONNX field or initializer it falls in
(``tests/bundle_diff.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder_qwen3vl import BuildOptions, build
from bundle_diff import bundle_differences


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    first = write_checkpoint(tmp_path_factory.mktemp("repro_a") / "ckpt", tiny_config())
    second = tmp_path_factory.mktemp("repro_b") / "elsewhere"
    shutil.copytree(first, second)
    return first, second


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_two_builds_are_byte_identical(ckpts: tuple[Path, Path], tmp_path: Path, precision: str) -> None:
    a = build(BuildOptions(input=ckpts[0], output=tmp_path / "first", precision=precision))
    b = build(BuildOptions(input=ckpts[1], output=tmp_path / "second_bundle", precision=precision))
    files = sorted(p.name for p in a.iterdir())
    assert {"model.onnx", "model.onnx.data", "embeddings.onnx", "vision_encoder.onnx", "genai_config.json"} <= set(files)
    differences = bundle_differences(a, b)
    print(f"{precision}: compared {len(files)} files, {sum((a / f).stat().st_size for f in files)} bytes: "
          f"{len(differences)} differ")
    assert differences == []


def test_differences_are_located(tmp_path: Path) -> None:
    """The reporter used above finds and explains a difference (else the test above could not fail usefully)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def write(folder: Path, producer: str, weight: float) -> None:
        folder.mkdir()
        w = numpy_helper.from_array(np.full((64, 64), weight, np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
        model = helper.make_model(graph, producer_name=producer)
        onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)

    write(tmp_path / "a", "p", 1.0)
    write(tmp_path / "b", "p", 1.0)
    assert bundle_differences(tmp_path / "a", tmp_path / "b") == []
    write(tmp_path / "c", "other", 2.0)
    diffs = bundle_differences(tmp_path / "a", tmp_path / "c")
    print(diffs)
    assert any(d.startswith("m.onnx: ") and "(producer_name: 'p' vs 'other')" in d for d in diffs)
    assert any(d.startswith("m.onnx.data: sizes 16384 / 16384, first difference at byte ") and "inside initializer 'w' of m.onnx" in d
               for d in diffs)


def test_producer_version_is_the_og_wheel_not_the_checkout(tmp_path: Path) -> None:
    """og stamps ``git rev-parse HEAD`` of the folder five levels above its file (inside a venv: this checkout);
    the bundle must carry the installed og's own version and commit, the same from any checkout."""
    import onnx
    import onnxruntime_genai as og

    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt", tiny_config(num_hidden_layers=3, deepstack_visual_indexes=(0,)))
    bundle = build(BuildOptions(input=ckpt, output=tmp_path / "bundle", precision="fp32"))
    decoder = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    print(f"producer: {decoder.producer_name} {decoder.producer_version}")
    assert decoder.producer_version == f"{og.__version__}+{og.__commit__[:7]}"


def test_same_bytes_from_another_checkout(ckpts: tuple[Path, Path], tmp_path: Path) -> None:
    """A copy of the package at another path (another checkout) builds the same bytes: nothing in a bundle may
    carry a source path (torch's exporter writes stack traces into node metadata; the vision export drops them)."""
    import subprocess
    import sys

    import builder_qwen3vl

    checkout = tmp_path / "another" / "checkout"
    shutil.copytree(Path(builder_qwen3vl.__file__).parent, checkout / "builder_qwen3vl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(builder_qwen3vl.__file__).parents[1] / "configs", checkout / "configs")
    here = build(BuildOptions(input=ckpts[0], output=tmp_path / "here", precision="fp32"))
    code = ("import sys, builder_qwen3vl; assert builder_qwen3vl.__file__.startswith(sys.argv[3]), builder_qwen3vl.__file__; "
            "from builder_qwen3vl import BuildOptions, build; build(BuildOptions(input=sys.argv[1], output=sys.argv[2], precision='fp32'))")
    subprocess.run([sys.executable, "-c", code, str(ckpts[0]), str(tmp_path / "there"), str(checkout)], cwd=checkout,
                   check=True, capture_output=True, timeout=600)
    for path in here.iterdir():
        assert str(Path(builder_qwen3vl.__file__).parents[1]).encode() not in path.read_bytes(), path.name
    assert bundle_differences(here, tmp_path / "there") == []
