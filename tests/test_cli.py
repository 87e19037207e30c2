"""CLI and BuildOptions: option parsing, validation and the output-folder rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from builder_qwen3vl.cli import main
from builder_qwen3vl.ground.errors import InputError
from builder_qwen3vl.options import BuildOptions, known_extra_options, parse_extra_options


def _run(capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err + caplog.text


def test_help_runs_as_module() -> None:
    res = subprocess.run([sys.executable, "-m", "builder_qwen3vl", "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0
    for flag in ("-i", "-o", "-p", "-e", "--cache_dir", "--extra_options", "--overwrite", "--verbose"):
        assert flag in res.stdout


@pytest.mark.parametrize("argv,fragment", [
    (["-p", "int8"], "invalid choice: 'int8'"),
    (["-e", "rocm"], "invalid choice: 'rocm'"),
])
def test_bad_precision_or_ep_exit_2(tmp_path: Path, capsys, argv: list[str], fragment: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


def test_extra_options_parse_og_spelling() -> None:
    assert parse_extra_options(["int4_block_size=128", "int4_accuracy_level=4"]) == {
        "int4_block_size": "128", "int4_accuracy_level": "4"}
    assert parse_extra_options(["int4_block_size=32,vision_precision=fp16"]) == {
        "int4_block_size": "32", "vision_precision": "fp16"}


@pytest.mark.parametrize("item,fragment", [
    ("not_a_key=1", "unknown key 'not_a_key'; known keys: "),
    ("int4_block_size", "'int4_block_size' is not KEY=VALUE"),
    ("=3", "is not KEY=VALUE"),
    ("vision_precision=int2", "vision_precision=int2 is not one of fp32, fp16, int8, int4, qint8, quint8"),
    ("exclude_embeds=false", "'exclude_embeds' is set by builder_qwen3vl"),
])
def test_extra_options_rejected(item: str, fragment: str) -> None:
    with pytest.raises(InputError, match="--extra_options") as err:
        parse_extra_options([item])
    assert fragment in str(err.value)


def test_unknown_extra_option_lists_known_keys(small_ckpt: Path, tmp_path: Path, capsys, caplog) -> None:
    code, text = _run(capsys, caplog, "-i", str(small_ckpt), "-o", str(tmp_path / "out"), "--extra_options", "bogus=1")
    assert code == 2
    assert "unknown key 'bogus'" in text and "int4_block_size" in text and "vision_precision" in text
    assert not (tmp_path / "out").exists()


def test_build_options_validate() -> None:
    with pytest.raises(InputError, match="-p/--precision: 'bf16'"):
        BuildOptions(input=Path("a"), output=Path("b"), precision="bf16")
    with pytest.raises(InputError, match="-e/--execution_provider: 'tpu'"):
        BuildOptions(input=Path("a"), output=Path("b"), execution_provider="tpu")
    opts = BuildOptions(input="a", output="b", extra_options={"int4_block_size": "64", "vision_precision": "fp16"})
    # our own key became its typed field; og's int4_* alias reaches og as the name og 0.18 reads
    assert opts.vision_precision == "fp16"
    assert opts.og_extra_options == {"prune_lm_head": "true", "block_size": "64", "qmoe_block_size": "128"}  # our defaults for og's keys
    typed = BuildOptions(input="a", output="b", vision_precision="qint8", max_length=512)
    assert (typed.vision_precision, typed.max_length, typed.extra_options) == ("qint8", 512, {})
    with pytest.raises(InputError, match="vision_precision=int2 is not one of"):
        BuildOptions(input="a", output="b", vision_precision="int2")
    with pytest.raises(InputError, match="max_length=16: conflicts with max_length=512"):
        BuildOptions(input="a", output="b", max_length=512, extra_options={"max_length": "16"})
    given = BuildOptions(input="a", output="b", extra_options={"prune_lm_head": "false"})
    assert given.og_extra_options == {"prune_lm_head": "false", "block_size": "128", "qmoe_block_size": "128"}
    cuda = BuildOptions(input="a", output="b", execution_provider="cuda")
    assert cuda.og_extra_options == {"prune_lm_head": "true"}  # the CPU kernel's block default stays on CPU
    assert "int4_block_size" in known_extra_options()


def test_input_missing_exit_2(tmp_path: Path, capsys, caplog) -> None:
    code, text = _run(capsys, caplog, "-i", str(tmp_path / "none"), "-o", str(tmp_path / "out"))
    assert code == 2 and "folder not found" in text
    assert not (tmp_path / "out").exists()


def test_no_staging_folder_left_after_failure(small_ckpt: Path, tmp_path: Path, capsys, caplog, monkeypatch) -> None:
    """Whatever step fails, neither -o nor the hidden staging folder beside it survives."""
    import importlib

    build_module = importlib.import_module("builder_qwen3vl.pipeline")
    from builder_qwen3vl.ground.errors import BuildError

    def boom(*args, **kwargs):
        raise BuildError("simulated exporter failure")

    monkeypatch.setattr(build_module, "write_bundle", boom)
    code, text = _run(capsys, caplog, "-i", str(small_ckpt), "-o", str(tmp_path / "out"))
    assert code == 1 and "simulated exporter failure" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_decoder_step_in_child_process(tmp_path: Path, monkeypatch) -> None:
    """Large checkpoints build the decoder in a child process (memory back to the OS); force that path on
    a tiny checkpoint: the bundle must be the same as the in-process one, and child errors must surface."""
    import importlib

    from builder_qwen3vl import BuildOptions, build
    from builder_qwen3vl.ground.errors import InputError
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    decoder_build = importlib.import_module("builder_qwen3vl.decoder.build")
    ckpt = write_checkpoint(tmp_path / "ckpt", tiny_config())
    build(BuildOptions(input=ckpt, output=tmp_path / "inproc", precision="fp32"))
    monkeypatch.setattr(decoder_build, "ISOLATE_DECODER_BYTES", 0)
    build(BuildOptions(input=ckpt, output=tmp_path / "child", precision="fp32"))
    for name in ("model.onnx", "model.onnx.data", "genai_config.json"):
        assert (tmp_path / "inproc" / name).read_bytes() == (tmp_path / "child" / name).read_bytes(), name
    with pytest.raises(InputError, match="og builder rejected the settings"):
        build(BuildOptions(input=ckpt, output=tmp_path / "bad", precision="int4", extra_options={"block_size": "abc"}))
    assert not (tmp_path / "bad").exists()
