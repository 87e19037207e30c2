"""Bad input, end to end through the CLI: exit code, ONE error line naming the file or option and
what was expected, and nothing left behind (no -o folder, no staging folder inside it,
no og/torch scratch folder in TMPDIR). The matrix with the observed messages is docs/errors.md.

Most rows fail while reading the checkpoint or the options, before any export; the disk-full,
og-rejected-value, Ctrl-C and SIGTERM rows get as far as writing the decoder.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from builder_qwen3vl.cli import main
from builder_qwen3vl.bundle.output_folder import STAGING_PREFIX

OUT = "bundle"  # every row writes (or must not write) tmp_path / OUT


def run_cli(capsys: pytest.CaptureFixture, *argv: str | Path) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def the_error_line(text: str) -> str:
    """The single error line; nothing multi-line, no traceback."""
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith(("error:", "internal error:", "builder-qwen3vl: error:"))]
    assert len(errors) == 1, text
    return errors[0]


def assert_no_leftovers(parent: Path, name: str = OUT, *, out_existed: bool = False) -> None:
    if not out_existed:
        assert not (parent / name).exists(), f"{parent / name} was left behind"
        return
    out = parent / name
    stale = [p.name for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)] if out.is_dir() else []
    assert not stale, f"staging folders left behind: {stale}"


def our_scratch(tmpdir: Path) -> list[str]:
    """What a build left in TMPDIR, minus third-party caches that a successful build leaves too
    (torch's empty "torchinductor_<user>" folder; a 51-byte ".ses" session-id file)."""
    return sorted(p.name for p in tmpdir.iterdir() if p.name != ".ses" and not p.name.startswith("torchinductor_"))


# ---------------------------------------------------------------- checkpoint mutations


def _rewrite_weights(ckpt: Path, edit: Callable[[dict], None]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(ckpt / "model.safetensors")
    edit(tensors)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})


def _write_config(ckpt: Path, config: dict) -> None:
    (ckpt / "config.json").write_text(json.dumps(config))


def _edit_config(ckpt: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    edit(config)
    _write_config(ckpt, config)


def qwen25_vl_config() -> dict:
    from transformers import Qwen2_5_VLConfig

    cfg = Qwen2_5_VLConfig().to_dict()
    cfg["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    return cfg


def qwen3_text_config() -> dict:
    from transformers import Qwen3Config

    cfg = Qwen3Config().to_dict()
    cfg["architectures"] = ["Qwen3ForCausalLM"]
    return cfg


def _split_into_missing_shard(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as f:
        names = list(f.keys())
    weights.rename(ckpt / "model-00001-of-00002.safetensors")
    weight_map = {n: "model-00001-of-00002.safetensors" for n in names}
    weight_map["model.visual.merger.linear_fc2.bias"] = "model-00002-of-00002.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# Each row: id, how to break a copy of the checkpoint (or build argv), exit code, fragments of the error line.
CHECKPOINT_ROWS: list[tuple[str, Callable[[Path], None], int, tuple[str, ...]]] = [
    ("config_missing", lambda c: (c / "config.json").unlink(), 2, ("no config.json", "expected an HF Qwen3-VL checkpoint folder")),
    ("config_not_json", lambda c: (c / "config.json").write_text("{'not': json"), 2, ("config.json: not valid JSON (line 1",)),
    ("config_qwen2_5_vl", lambda c: _write_config(c, qwen25_vl_config()), 2,
     ("config.json: not a Qwen3-VL checkpoint (found Qwen2_5_VLForConditionalGeneration", "expected Qwen3VLForConditionalGeneration")),
    ("config_qwen3_text", lambda c: _write_config(c, qwen3_text_config()), 2,
     ("not a Qwen3-VL checkpoint (found Qwen3ForCausalLM", "expected Qwen3VLForConditionalGeneration")),
    ("weights_missing", lambda c: (c / "model.safetensors").unlink(), 2,
     ("no weights found (expected model.safetensors or model.safetensors.index.json)",)),
    ("shard_missing", _split_into_missing_shard, 2,
     ("model.safetensors.index.json: names shard 'model-00002-of-00002.safetensors', which is missing",)),
    ("safetensors_truncated", lambda c: _truncate(c / "model.safetensors"), 2, ("model.safetensors: truncated safetensors file",)),
    ("tensor_missing", lambda c: _rewrite_weights(c, lambda t: t.pop("model.language_model.norm.weight")), 2,
     ("weights lack tensor 'model.language_model.norm.weight' (expected shape [64])",)),
    ("tensor_wrong_shape", lambda c: _rewrite_weights(c, lambda t: t.update({"model.language_model.norm.weight": t["model.language_model.norm.weight"][:32].clone()})), 2,
     ("model.safetensors: tensor 'model.language_model.norm.weight' has shape [32], expected [64]",)),
    ("image_token_outside_vocab", lambda c: _edit_config(c, lambda cfg: cfg.update(image_token_id=512)), 2,
     ("config.json: image_token_id=512 is outside the vocabulary (text_config vocab_size=512)",)),
    ("tokenizer_missing", lambda c: (c / "tokenizer.json").unlink(), 2,
     ("tokenizer file tokenizer.json is missing (expected tokenizer.json and tokenizer_config.json)",)),
]


@pytest.mark.parametrize("break_it,code,fragments", [r[1:] for r in CHECKPOINT_ROWS], ids=[r[0] for r in CHECKPOINT_ROWS])
def test_bad_checkpoint(small_ckpt: Path, tmp_path: Path, capsys, break_it, code: int, fragments: tuple[str, ...]) -> None:
    break_it(small_ckpt)
    got, text = run_cli(capsys, "-i", small_ckpt, "-o", tmp_path / OUT, "-p", "fp32")
    _assert_one_error_line(got, text, code, fragments, tmp_path)


def _assert_one_error_line(got: int, text: str, code: int, fragments: tuple[str, ...], tmp_path: Path) -> None:
    line = the_error_line(text)
    print(f"exit {got}: {line}")
    assert got == code
    for fragment in fragments:
        assert fragment in line
    assert_no_leftovers(tmp_path)


@pytest.mark.parametrize("kind,fragment", [
    ("missing", "folder not found"),
    ("file", "expected a checkpoint folder, found a file"),
    ("empty", "no config.json (expected an HF Qwen3-VL checkpoint folder)"),
])
def test_bad_input_folder(tmp_path: Path, capsys, kind: str, fragment: str) -> None:
    target = tmp_path / "ckpt"
    if kind == "file":
        target.write_text("x")
    elif kind == "empty":
        target.mkdir()
    got, text = run_cli(capsys, "-i", target, "-o", tmp_path / OUT)
    line = the_error_line(text)
    print(f"exit {got}: {line}")
    assert got == 2 and str(target) in line and fragment in line
    assert_no_leftovers(tmp_path)


def test_extra_tensors_warn_and_build_goes_on(small_ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Unexpected tensors are reported once and ignored; the build proceeds (exporters stubbed for speed)."""
    import importlib

    import torch

    _rewrite_weights(small_ckpt, lambda t: t.update({"model.extra_head.weight": torch.zeros(2, 2), "mtp.proj.weight": torch.zeros(2)}))
    build_module = importlib.import_module("builder_qwen3vl.pipeline")

    def fake_write_bundle(ckpt, plan, options, out: Path) -> None:
        (out / "genai_config.json").write_text("{}")

    monkeypatch.setattr(build_module, "write_bundle", fake_write_bundle)
    got, text = run_cli(capsys, "-i", small_ckpt, "-o", tmp_path / OUT)
    print(text)
    assert got == 0
    assert "ignoring 2 unexpected tensor(s), e.g. 'model.extra_head.weight'" in text
    assert (tmp_path / OUT / "genai_config.json").is_file()


OPTION_ROWS = [
    ("unknown_key", ["--extra_options", "bogus=1"], 2, ("--extra_options: unknown key 'bogus'; known keys: ", "vision_precision")),
    ("not_key_value", ["--extra_options", "block_size"], 2, ("--extra_options: 'block_size' is not KEY=VALUE",)),
    ("bad_own_value", ["--extra_options", "vision_precision=int2"], 2, ("vision_precision=int2 is not one of fp32, fp16, int8, int4, qint8, quint8",)),
    ("reserved_key", ["--extra_options", "exclude_embeds=false"], 2, ("'exclude_embeds' is set by builder_qwen3vl and cannot be overridden",)),
    ("alias_conflict", ["--extra_options", "int4_block_size=32", "block_size=64"], 2,
     ("--extra_options: extra option int4_block_size=32 conflicts with block_size=64",)),
    ("bf16_io", ["-p", "int4", "-e", "cuda", "--extra_options", "use_cuda_bf16=true"], 2,
     ("--extra_options use_cuda_bf16=true: bfloat16 inputs/outputs are not supported", "expected use_cuda_bf16=false")),
    ("precision_unknown", ["-p", "int8"], 2, ("argument -p/--precision: invalid choice: 'int8'",)),
    ("ep_unknown", ["-e", "rocm"], 2, ("argument -e/--execution_provider: invalid choice: 'rocm'",)),
]


@pytest.mark.parametrize("argv,code,fragments", [r[1:] for r in OPTION_ROWS], ids=[r[0] for r in OPTION_ROWS])
def test_bad_options(small_ckpt: Path, tmp_path: Path, capsys, argv: list[str], code: int, fragments: tuple[str, ...]) -> None:
    try:
        got, text = run_cli(capsys, "-i", small_ckpt, "-o", tmp_path / OUT, *argv)
    except SystemExit as exc:  # argparse's own usage errors
        got, captured = exc.code, capsys.readouterr()
        text = captured.out + captured.err
    _assert_one_error_line(got, text, code, fragments, tmp_path)


def test_og_rejects_option_value(buildable_ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Values only og's builder checks (block_size must be an int) fail with exit 2 after staging began."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    got, text = run_cli(capsys, "-i", buildable_ckpt, "-o", tmp_path / OUT, "-p", "int4", "--extra_options", "block_size=abc")
    line = the_error_line(text)
    print(f"exit {got}: {line}")
    assert got == 2
    assert "og builder rejected the settings: invalid literal for int() with base 10: 'abc'" in line
    assert "(--extra_options given: block_size=abc)" in line
    assert_no_leftovers(tmp_path)
    assert not our_scratch(scratch), our_scratch(scratch)


# ---------------------------------------------------------------- output folder rows


def test_output_equal_to_or_inside_input(small_ckpt: Path, tmp_path: Path, capsys) -> None:
    for out in (small_ckpt, small_ckpt / OUT):
        got, text = run_cli(capsys, "-i", small_ckpt, "-o", out)
        line = the_error_line(text)
        print(f"exit {got}: {line}")
        assert got == 2 and f"-o {out}: must not be the input folder or inside it" in line
    assert sorted(p.name for p in small_ckpt.iterdir() if p.name.startswith(".") or p.name == OUT) == []


def test_output_is_a_file(small_ckpt: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / OUT).write_text("keep")
    got, text = run_cli(capsys, "-i", small_ckpt, "-o", tmp_path / OUT)
    line = the_error_line(text)
    print(f"exit {got}: {line}")
    assert got == 2 and "exists and is a file; expected a folder path" in line
    assert (tmp_path / OUT).read_text() == "keep"
    assert_no_leftovers(tmp_path, out_existed=True)


def test_output_under_a_file(small_ckpt: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("keep")
    out = tmp_path / "afile" / "sub" / OUT
    got, text = run_cli(capsys, "-i", small_ckpt, "-o", out)
    line = the_error_line(text)
    print(f"exit {got}: {line}")
    assert got == 2 and f"{tmp_path / 'afile'} is a file, expected a folder on the output path" in line
    assert (tmp_path / "afile").read_text() == "keep"


def test_output_not_empty_without_overwrite(small_ckpt: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / OUT).mkdir()
    (tmp_path / OUT / "mine.txt").write_text("keep")
    got, text = run_cli(capsys, "-i", small_ckpt, "-o", tmp_path / OUT)
    line = the_error_line(text)
    print(f"exit {got}: {line}")
    assert got == 2 and "folder is not empty; pass --overwrite to replace the bundle in it" in line
    assert (tmp_path / OUT / "mine.txt").read_text() == "keep"
    assert_no_leftovers(tmp_path, out_existed=True)


def test_output_on_read_only_mount(small_ckpt: Path, tmp_path: Path) -> None:
    """Tests run as root, which ignores permission bits: use a read-only bind mount in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not installed")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (
        f'mount --bind "{ro}" "{ro}" && mount -o remount,ro,bind "{ro}" "{ro}" || exit 77; '
        f'exec "{sys.executable}" -m builder_qwen3vl -i "{small_ckpt}" -o "{ro / OUT}"'
    )
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=120, check=False)
    if res.returncode == 77 or "Operation not permitted" in res.stderr:
        pytest.skip(f"cannot make a read-only mount here: {res.stderr.strip()}")
    line = the_error_line(res.stdout + res.stderr)
    print(f"exit {res.returncode}: {line}")
    assert res.returncode == 2 and f"-o {ro / OUT}: cannot write in {ro} (read-only or no permission)" in line
    assert list(ro.iterdir()) == []


def test_disk_full_while_writing(buildable_ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """ENOSPC in the middle of og's model.onnx.data write: one line, exit 1, staging and scratch removed."""
    import onnx_ir

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    calls = []

    def full_disk_save(model, path, *args, external_data=None, **kwargs):
        data = Path(path).with_name(external_data) if external_data else Path(path)
        data.write_bytes(b"\0" * 4096)  # what a disk that fills up leaves: a partial file
        calls.append(data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(data))

    monkeypatch.setattr(onnx_ir, "save", full_disk_save)
    out = tmp_path / "new" / OUT  # "new" does not exist yet: the build creates it, and must remove it again
    got, text = run_cli(capsys, "-i", buildable_ckpt, "-o", out, "-p", "fp32")
    line = the_error_line(text)
    print(f"exit {got}: {line}")
    assert calls, "the simulated full disk was never hit"
    assert got == 1
    assert f"error: -o {out}: no space left on device while writing {out / 'model.onnx.data'}" in line
    assert "removed the partial bundle" in line
    assert not (tmp_path / "new").exists()
    assert not our_scratch(scratch), our_scratch(scratch)


# ---------------------------------------------------------------- interruption (real process, real signals)


@pytest.fixture(scope="module")
def buildable_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint og can build (real tokenizer): the signal rows need a build that is really running."""
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("buildable"), tiny_config())


@pytest.mark.parametrize("sig,code,message", [
    (signal.SIGINT, 130, "interrupted: stopped; a partial bundle, if any, was removed"),
    (signal.SIGTERM, 143, "terminated: removed the partial bundle"),
])
def test_interrupted_build_leaves_nothing(buildable_ckpt: Path, tmp_path: Path, sig: int, code: int, message: str) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "builder_qwen3vl", "-i", str(buildable_ckpt), "-o", str(tmp_path / OUT), "-p", "fp32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    writing = None
    while writing is None and proc.poll() is None and time.monotonic() < deadline:
        staging = [p for p in (tmp_path / OUT).glob(STAGING_PREFIX + "*")] if (tmp_path / OUT).is_dir() else []
        if staging and any(staging[0].iterdir()):  # the decoder's files are being written
            writing = sorted(p.name for p in staging[0].iterdir())
        time.sleep(0.05)
    assert writing is not None, f"the build never started writing (exit {proc.poll()})"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    print(f"signal {sig} while staging held {writing}: exit {proc.returncode}; {err.strip().splitlines()[-1]}")
    assert proc.returncode == code, err
    assert message in err and "Traceback" not in err
    assert_no_leftovers(tmp_path)
    assert not our_scratch(scratch), f"scratch left in TMPDIR: {our_scratch(scratch)}"
