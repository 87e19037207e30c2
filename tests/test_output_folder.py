"""``-o`` and ``--overwrite``: an earlier bundle is replaced, nothing else is ever deleted; a mount point works;
a build that cannot fit fails before any work; files get the user's umask; a build is quiet by default.

Most rows swap the exporters for a fake ``write_bundle`` that writes bundle-named files (the folder rules do
not depend on what the files hold); the mount-point and quiet rows run real builds.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fake_bundle import NEW_FILES, write_files

from builder_qwen3vl.cli import main
from builder_qwen3vl.bundle.output_folder import STAGING_PREFIX

OLD_FILES = {"genai_config.json": "old", "model.onnx": "old model", "vision_encoder.onnx.data": "old data"}


def run_cli(capsys: pytest.CaptureFixture, *argv: str | Path) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def error_line(text: str) -> str:
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith(("error:", "internal error:"))]
    assert len(lines) == 1, text
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def test_output_containing_input_is_refused(small_ckpt: Path, fake_exporters: list[Path], capsys) -> None:
    parent = small_ckpt.parent
    before = snapshot(parent)
    for flags in ([], ["--overwrite"]):
        code, text = run_cli(capsys, "-i", small_ckpt, "-o", parent, *flags)
        line = error_line(text)
        print(f"exit {code}: {line}")
        assert code == 2 and f"-o {parent}: contains the input folder {small_ckpt}" in line
    assert snapshot(parent) == before and fake_exporters == []


@pytest.mark.parametrize("where", ["cwd", "ancestor", "home"])
def test_overwrite_refuses_working_and_home_folders(where: str, small_ckpt: Path, tmp_path: Path, fake_exporters: list[Path],
                                                    capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = write_files(tmp_path / "area" / "bundle", OLD_FILES)
    inner = bundle / "sub"  # an empty folder below: cwd there makes the bundle an ancestor of the working folder
    out = {"cwd": bundle, "ancestor": bundle, "home": bundle}[where]
    if where == "home":
        monkeypatch.setenv("HOME", str(bundle))
        monkeypatch.chdir(tmp_path)
    else:
        if where == "ancestor":
            inner.mkdir()
        monkeypatch.chdir(inner if where == "ancestor" else bundle)
    before = snapshot(bundle)
    code, text = run_cli(capsys, "-i", small_ckpt, "-o", out, "--overwrite")
    line = error_line(text)
    print(f"exit {code}: {line}")
    expected = {"cwd": "is the working folder", "ancestor": "is an ancestor of the working folder",
                "home": "is the home folder"}[where]
    assert code == 2 and expected in line and "--overwrite" in line
    assert snapshot(bundle) == before and fake_exporters == []


def test_overwrite_refuses_foreign_files(small_ckpt: Path, tmp_path: Path, fake_exporters: list[Path], capsys) -> None:
    out = write_files(tmp_path / "out", {**OLD_FILES, "notes.txt": "mine", "photo.jpg": "mine", "z.txt": "mine", "zz.txt": "x"})
    (out / "albums").mkdir()
    before = snapshot(out)
    code, text = run_cli(capsys, "-i", small_ckpt, "-o", out, "--overwrite")
    line = error_line(text)
    print(f"exit {code}: {line}")
    assert code == 2 and "holds files a bundle does not have (albums/, notes.txt, photo.jpg and 2 more)" in line
    assert snapshot(out) == before and fake_exporters == []


def test_overwrite_replaces_an_earlier_bundle(small_ckpt: Path, tmp_path: Path, fake_exporters: list[Path], capsys) -> None:
    out = write_files(tmp_path / "out", OLD_FILES)
    (out / f"{STAGING_PREFIX}killed").mkdir()  # left by a build that was SIGKILLed
    (out / f"{STAGING_PREFIX}killed" / "model.onnx.data").write_text("partial")
    code, text = run_cli(capsys, "-i", small_ckpt, "-o", out, "--overwrite")
    assert code == 0, text
    assert fake_exporters and fake_exporters[0].parent == out.resolve()  # staged inside -o, never beside it
    assert {p.name: p.read_text() for p in out.iterdir()} == NEW_FILES
    assert list(tmp_path.iterdir()) == [out, small_ckpt] or sorted(tmp_path.iterdir()) == sorted([out, small_ckpt])


def test_failed_build_keeps_the_earlier_bundle(small_ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from builder_qwen3vl.ground.errors import BuildError

    build_module = importlib.import_module("builder_qwen3vl.pipeline")

    def failing(ckpt, plan, options, out: Path) -> None:
        write_files(out, NEW_FILES)
        raise BuildError("simulated exporter failure")

    monkeypatch.setattr(build_module, "write_bundle", failing)
    out = write_files(tmp_path / "out", OLD_FILES)
    before = snapshot(out)
    code, text = run_cli(capsys, "-i", small_ckpt, "-o", out, "--overwrite")
    assert code == 1 and "simulated exporter failure" in error_line(text)
    assert snapshot(out) == before


def test_not_enough_space_fails_before_any_work(small_ckpt: Path, tmp_path: Path, fake_exporters: list[Path], capsys,
                                                monkeypatch) -> None:
    from builder_qwen3vl.bundle import output_folder

    real = shutil.disk_usage
    monkeypatch.setattr(output_folder.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    code, text = run_cli(capsys, "-i", small_ckpt, "-o", tmp_path / "out")
    line = error_line(text)
    print(f"exit {code}: {line}")
    assert code == 2 and "0.00 GB free on its device, the build needs about" in line and "bundle ~" in line
    assert not (tmp_path / "out").exists() and fake_exporters == []


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_files_follow_the_umask(umask: int, file_mode: int, dir_mode: int, small_ckpt: Path, tmp_path: Path,
                                fake_exporters: list[Path], capsys) -> None:
    previous = os.umask(umask)
    try:
        code, text = run_cli(capsys, "-i", small_ckpt, "-o", tmp_path / "new" / "out")
    finally:
        os.umask(previous)
    assert code == 0, text
    out = tmp_path / "new" / "out"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {n: oct(file_mode) for n in NEW_FILES}
    assert oct(out.stat().st_mode & 0o777) == oct(dir_mode)


def test_mount_point_as_output(tmp_path: Path) -> None:
    """-o is a bind mount (a container volume): build into it, then --overwrite the bundle there. Renaming the
    mount itself fails with EBUSY, so this passes only if the bundle is staged inside -o."""
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    if shutil.which("unshare") is None:
        pytest.skip("unshare not installed")
    ckpt = write_checkpoint(tmp_path / "ckpt", tiny_config())
    volume = tmp_path / "volume"
    volume.mkdir()
    build = f'"{sys.executable}" -m builder_qwen3vl -i "{ckpt}" -o "{volume}" -p fp32'
    script = (f'mount --bind "{volume}" "{volume}" || exit 77; '
              f'{build} || exit $?; {build} --overwrite || exit $?; mountpoint -q "{volume}" || exit 78')
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=600, check=False)
    if res.returncode == 77 or "Operation not permitted" in res.stderr:
        pytest.skip(f"cannot make a mount point here: {res.stderr.strip()}")
    print(res.stderr.strip().splitlines()[-1])
    assert res.returncode == 0, res.stderr
    assert (volume / "genai_config.json").is_file() and not list(volume.glob(STAGING_PREFIX + "*"))


def test_build_from_python_is_quiet(tmp_path: Path) -> None:
    """An application that logs at INFO and calls build() sees our step lines, not onnxruntime's quantizer
    (one line per tensor) or torch's exporter warnings; verbose=True brings them back."""
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt", tiny_config())
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO); "
            "from builder_qwen3vl import BuildOptions, build; "
            f"build(BuildOptions(input={str(ckpt)!r}, output=sys.argv[1], precision='int4', verbose=sys.argv[2] == 'v'))")
    quiet = subprocess.run([sys.executable, "-c", code, str(tmp_path / "quiet"), "q"], capture_output=True, text=True,
                           timeout=600, check=True).stderr.splitlines()
    chatter = [line for line in quiet if not line.startswith("INFO:builder_qwen3vl")]
    print(f"{len(quiet)} lines, {len(chatter)} not ours: {chatter[:5]}")
    assert chatter == [] and any("bundle written to" in line for line in quiet)
    loud = subprocess.run([sys.executable, "-c", code, str(tmp_path / "loud"), "v"], capture_output=True, text=True,
                          timeout=600, check=True).stderr.splitlines()
    assert sum("Quantization parameters for tensor" in line for line in loud) > 5  # the control: chatter exists
