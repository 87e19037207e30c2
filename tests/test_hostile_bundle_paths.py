"""A bundle reads only files inside its folder: genai_config.json names (``../x.onnx``, absolute paths), model
files that are symlinks to elsewhere and external data locations that climb out fail ``verify`` (also
``--static-only``: exit 1, the line naming the file and the key), ``og_run.load_model`` and the config readers
(one-line BundlePathError) and examples/chat.py (one ``error:`` line, exit 2). Each hostile bundle keeps the
outside file present, so only the path rule can catch it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from builder_qwen3vl.ground.bundle_paths import BundlePathError, bundle_file, check_bundle_paths, external_data_locations
from builder_qwen3vl.cli import main
from builder_qwen3vl.runtime.og_run import load_model, resize_settings
from builder_qwen3vl.ground.video_settings import ImageSettings, VideoSettings
from builder_qwen3vl.verify import verify_bundle

CHAT = Path(__file__).resolve().parents[1] / "examples" / "chat.py"
OUTSIDE = "resolves to {}, outside the bundle folder {}; a bundle reads only files inside itself"


def copy_bundle(src: Path, dst: Path) -> Path:
    """A private copy a test may break: the external data hard-linked (never written), the rest copied."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name.endswith(".data"):
            try:
                os.link(item, dst / item.name)
                continue
            except OSError:  # another file system: copy
                pass
        shutil.copy2(item, dst / item.name)
    return dst


def edit_genai(bundle: Path, section: str, key: str, value: str) -> None:
    path = bundle / "genai_config.json"
    doc = json.loads(path.read_text())
    doc["model"][section][key] = value
    path.write_text(json.dumps(doc, indent=4))


def relative_embeddings(bundle: Path, outside: Path) -> str:
    """genai_config.json names ../x.onnx: a working embeddings model (with its data) next to the bundle."""
    shutil.copy(bundle / "embeddings.onnx", outside / "x.onnx")
    shutil.copy(bundle / "embeddings.onnx.data", outside / "embeddings.onnx.data")
    edit_genai(bundle, "embedding", "filename", "../x.onnx")
    return "genai_config.json model.embedding.filename is '../x.onnx', which " + OUTSIDE.format(outside / "x.onnx", bundle)


def absolute_embeddings(bundle: Path, outside: Path) -> str:
    shutil.copy(bundle / "embeddings.onnx", outside / "x.onnx")
    shutil.copy(bundle / "embeddings.onnx.data", outside / "embeddings.onnx.data")
    edit_genai(bundle, "embedding", "filename", str(outside / "x.onnx"))
    return f"genai_config.json model.embedding.filename is '{outside / 'x.onnx'}': an absolute path"


def symlinked_decoder(bundle: Path, outside: Path) -> str:
    """model.onnx is a symlink to a copy outside (og 0.18 loads it; only the rule refuses it)."""
    shutil.move(bundle / "model.onnx", outside / "model.onnx")
    (bundle / "model.onnx").symlink_to(outside / "model.onnx")
    return "genai_config.json model.decoder.filename is 'model.onnx', which " + OUTSIDE.format(outside / "model.onnx", bundle)


def escaping_external_data(bundle: Path, outside: Path) -> str:
    """model.onnx's tensors name ../x.data, which holds the real bytes."""
    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../x.data"
    (bundle / "model.onnx").unlink()
    onnx.save(model, str(bundle / "model.onnx"))
    shutil.copy(bundle / "model.onnx.data", outside / "x.data")
    (bundle / "model.onnx.data").unlink()
    return "model.onnx external data location is '../x.data', which " + OUTSIDE.format(outside / "x.data", bundle)


HOSTILE: dict[str, Callable[[Path, Path], str]] = {
    "genai_config names ../x.onnx": relative_embeddings,
    "genai_config names an absolute path": absolute_embeddings,
    "model.onnx is a symlink to outside": symlinked_decoder,
    "external data location ../x.data": escaping_external_data,
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, shipped_fp32_bundle: Path) -> dict[str, tuple[Path, str]]:
    """case -> (bundle, the text its failure must hold); each bundle in its own folder beside its outside files."""
    out = {}
    for i, (case, break_it) in enumerate(HOSTILE.items()):
        root = tmp_path_factory.mktemp(f"hostile{i}").resolve()
        bundle = copy_bundle(shipped_fp32_bundle, root / "bundle")
        out[case] = (bundle, break_it(bundle, root))
    return out


def run_cli(capsys: pytest.CaptureFixture, *argv: str | Path) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).splitlines()


def chat(*argv: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHAT), *map(str, argv)], check=False, capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    print(f"observed: {lines[0]}")
    return lines[0]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_verify_static_only_fails(hostile: dict[str, tuple[Path, str]], case: str, capsys: pytest.CaptureFixture) -> None:
    bundle, reason = hostile[case]
    code, lines = run_cli(capsys, "verify", bundle, "--static-only")
    print("\n".join(lines))
    assert code == 2  # untrusted input, as a checkpoint naming a file outside -i
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: verify {bundle}: ") and reason in errors[0], lines
    assert any(line.startswith(f"verify {bundle}: FAILED (") for line in lines)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_load_model_refuses(hostile: dict[str, tuple[Path, str]], case: str) -> None:
    bundle, reason = hostile[case]
    with pytest.raises(BundlePathError) as caught:
        load_model(bundle)
    assert reason in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_chat_prints_one_line(hostile: dict[str, tuple[Path, str]], case: str, tmp_path: Path) -> None:
    bundle, reason = hostile[case]
    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "ok.png")
    line = one_error_line(chat("-m", bundle, "--image", tmp_path / "ok.png", "--max-new-tokens", "2"))
    assert line.startswith(f"error: -m {bundle}: ") and reason in line


@pytest.fixture()
def symlinked_configs(tmp_path: Path, shipped_fp32_bundle: Path) -> Path:
    """processor_config.json, video_preprocessor_config.json and tokenizer.json: symlinks to copies outside."""
    bundle = copy_bundle(shipped_fp32_bundle, tmp_path / "bundle")
    for name in ("processor_config.json", "video_preprocessor_config.json", "tokenizer.json"):
        shutil.move(bundle / name, tmp_path / name)
        (bundle / name).symlink_to(tmp_path / name)
    return bundle


def test_config_readers_refuse_symlinks_to_outside(symlinked_configs: Path) -> None:
    bundle = symlinked_configs
    for read, name in ((resize_settings, "processor_config.json"), (ImageSettings.from_bundle, "processor_config.json"),
                       (VideoSettings.from_bundle, "video_preprocessor_config.json")):
        with pytest.raises(BundlePathError, match=f"^{name} is a symlink that resolves to .*, outside the bundle folder"):
            read(bundle)
    with pytest.raises(BundlePathError, match="^tokenizer.json is a symlink that resolves to"):
        check_bundle_paths(bundle)


def test_verify_names_each_symlinked_config(symlinked_configs: Path) -> None:
    report = verify_bundle(symlinked_configs, run=False)
    for start in ("genai_config.json model.vision.config_filename is 'processor_config.json', which resolves to ",
                  "video_preprocessor_config.json is a symlink that resolves to ", "tokenizer.json is a symlink that resolves to "):
        assert any(f.startswith(start) for f in report.failures), report.failures


def test_chat_video_refuses_symlinked_video_config(symlinked_configs: Path, tmp_path: Path) -> None:
    (symlinked_configs / "processor_config.json").unlink()  # a real file again: the video config is the one left
    shutil.copy(tmp_path / "processor_config.json", symlinked_configs / "processor_config.json")
    (symlinked_configs / "tokenizer.json").unlink()
    shutil.copy(tmp_path / "tokenizer.json", symlinked_configs / "tokenizer.json")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), (40 * i, 100, 50)).save(frames / f"{i}.png")
    line = one_error_line(chat("-m", symlinked_configs, "--video", frames, "--fps", "2", "--max-new-tokens", "2"))
    assert f"-m {symlinked_configs}: video_preprocessor_config.json is a symlink that resolves to " in line


def test_paths_inside_the_bundle_pass(tmp_path: Path) -> None:
    """Names that stay inside (a sub folder, ``..`` back in, a symlink within, the bundle reached by a symlink)."""
    bundle = tmp_path / "bundle"
    (bundle / "sub").mkdir(parents=True)
    (bundle / "sub" / "m.onnx").write_bytes(b"")
    (bundle / "link.onnx").symlink_to(bundle / "sub" / "m.onnx")
    (tmp_path / "alias").symlink_to(bundle)
    for name in ("sub/m.onnx", "sub/../link.onnx", "link.onnx", "missing.onnx"):
        assert bundle_file(bundle, name) == bundle / name
        assert bundle_file(tmp_path / "alias", name) == tmp_path / "alias" / name
    assert bundle_file(bundle, "../m.onnx.data", base=bundle / "sub") == bundle / "sub" / "../m.onnx.data"


@pytest.mark.parametrize("name, message", [
    ("../bundle2/x.onnx", "k is '../bundle2/x.onnx', which resolves to "),  # a sibling whose name starts the same
    ("sub/../../x.onnx", "k is 'sub/../../x.onnx', which resolves to "),
    (".", "k is '.', which resolves to "),  # the folder itself is no file
    ("/etc/passwd", "k is '/etc/passwd': an absolute path"),
    ("", "k is '': expected the name of a file inside the bundle folder"),
    (5, "k is 5: expected the name of a file inside the bundle folder"),
    ("a\0b", "k is 'a\\x00b': expected the name of a file inside the bundle folder"),
])
def test_names_outside_the_bundle_fail(tmp_path: Path, name: object, message: str) -> None:
    (tmp_path / "bundle").mkdir()
    with pytest.raises(BundlePathError) as caught:
        bundle_file(tmp_path / "bundle", name, "k")
    assert str(caught.value).startswith(message)


def test_verify_reports_a_non_string_file_name(tmp_path: Path, shipped_fp32_bundle: Path) -> None:
    bundle = copy_bundle(shipped_fp32_bundle, tmp_path / "bundle")
    edit_genai(bundle, "vision", "config_filename", 7)  # type: ignore[arg-type]
    report = verify_bundle(bundle, run=False)
    assert "genai_config.json model.vision.config_filename is 7: expected the name of a file inside the bundle folder" in report.failures


def _external(name: str, location: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def test_external_data_locations_everywhere_a_tensor_lives(tmp_path: Path) -> None:
    """Initializers, sparse initializers, Constant attributes and sub-graphs, read from the wire format."""
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    branch = helper.make_graph([helper.make_node("Constant", [], ["y"], value=_external("b", "branch.data"))], "b", [], [out])
    sparse = helper.make_sparse_tensor(_external("sv", "sparse.data"), numpy_helper.from_array(np.array([0], np.int64), "si"), [4])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=_external("c", "const.data")),
         helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [out],
        initializer=[_external("w", "../w.data")], sparse_initializer=[sparse])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    assert external_data_locations(tmp_path / "m.onnx") == {"branch.data", "sparse.data", "const.data", "../w.data"}
    (tmp_path / "broken.onnx").write_bytes((tmp_path / "m.onnx").read_bytes()[:40])
    assert isinstance(external_data_locations(tmp_path / "broken.onnx"), set)  # damaged: no exception


def hub_cache_snapshot(src: Path, repo: Path, revision: str = "0123abcd") -> Path:
    """``src`` laid out as the Hugging Face hub cache lays out a download: every file a blob under ``repo/blobs``,
    linked relatively from ``repo/snapshots/<revision>/``."""
    import hashlib

    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for item in sorted(src.iterdir()):
        digest = hashlib.sha256(item.read_bytes()).hexdigest()
        shutil.copy2(item, repo / "blobs" / digest)
        (snapshot / item.name).symlink_to(Path("..", "..", "blobs", digest))
    return snapshot


def test_a_hub_cache_snapshot_bundle_is_inside(tmp_path: Path, shipped_fp32_bundle: Path) -> None:
    """The rule a checkpoint follows holds for a bundle: a snapshot's own blobs count as inside."""
    snapshot = hub_cache_snapshot(shipped_fp32_bundle, tmp_path / "models--org--bundle")
    check_bundle_paths(snapshot)
    report = verify_bundle(snapshot, run=False)
    assert report.ok, report.lines()
    assert load_model(snapshot) is not None


def test_a_snapshot_linking_into_another_repository_fails(tmp_path: Path, shipped_fp32_bundle: Path) -> None:
    snapshot = hub_cache_snapshot(shipped_fp32_bundle, tmp_path / "models--org--bundle")
    other = hub_cache_snapshot(shipped_fp32_bundle, tmp_path / "models--org--other")
    (snapshot / "tokenizer.json").unlink()
    (snapshot / "tokenizer.json").symlink_to(os.path.relpath(other / "tokenizer.json", snapshot))
    with pytest.raises(BundlePathError, match="tokenizer.json is a symlink that resolves to .*outside the bundle folder"):
        check_bundle_paths(snapshot)
