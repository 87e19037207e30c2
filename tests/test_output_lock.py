"""One writer per ``-o``: a build holds a flock on the output folder for its whole run.

A second build into a held folder exits 2 with one line naming the holder's pid and touches nothing; the
first one completes with its bundle whole. A staging folder a SIGKILLed build left is named by the
not-empty error and removed by ``--overwrite``. The lock is released after success, failure and Ctrl-C.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_bad_input import run_cli
from test_bad_input import the_error_line as error_line
from fake_bundle import NEW_FILES as FAKE_FILES
from test_output_folder import snapshot as contents

from builder_qwen3vl.bundle.output_folder import STAGING_PREFIX



def lock_is_free(folder: Path) -> bool:
    """True if nobody (this process included: flock locks belong to open files) holds ``folder``'s lock."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def start_cli_build(ckpt: Path, out: Path, tmp: Path) -> subprocess.Popen:
    scratch = tmp / "scratch"
    scratch.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "builder_qwen3vl", "-i", str(ckpt), "-o", str(out), "-p", "fp32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)})


def wait_for_staging(proc: subprocess.Popen, out: Path, *, with_files: bool) -> Path:
    """The build's staging folder once it exists (and holds files, if ``with_files``)."""
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        staging = sorted(out.glob(STAGING_PREFIX + "*")) if out.is_dir() else []
        if staging and (not with_files or any(staging[0].iterdir())):
            return staging[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the build never staged anything (exit {proc.poll()}): {proc.communicate()[1][-2000:]}")


@pytest.fixture(scope="module")
def buildable_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint og can build (real tokenizer), for the rows that run a real build in a subprocess."""
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("buildable"), tiny_config())


@pytest.fixture()
def lock_holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    """Another process holding the lock on an existing -o, as a build does before it stages anything."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "genai_config.json").write_text("old")
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    try:
        yield out, proc
    finally:
        proc.kill()
        proc.wait()


def test_second_build_exits_2_and_the_first_completes(buildable_ckpt: Path, small_ckpt: Path, tmp_path: Path,
                                                      capsys) -> None:
    from builder_qwen3vl.verify import verify_bundle

    out = tmp_path / "out"
    first = start_cli_build(buildable_ckpt, out, tmp_path)
    staging = wait_for_staging(first, out, with_files=False)
    assert staging.name.startswith(f"{STAGING_PREFIX}{first.pid}-")  # the staging folder names its build
    expected = f"error: -o {out}: another build (pid {first.pid}) is writing this folder; wait for it or pick another -o"
    for flags in ([], ["--overwrite"]):
        code, text = run_cli(capsys, "-i", small_ckpt, "-o", out, "-p", "fp32", *flags)
        line = error_line(text)
        print(f"exit {code}: {line}")
        assert (code, line) == (2, expected)
        assert first.poll() is not None or staging.is_dir()  # the running build's staging folder is untouched
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert not list(out.glob(STAGING_PREFIX + "*"))
    report = verify_bundle(out, run=False)
    assert report.ok, report.lines()
    assert lock_is_free(out)


def test_held_folder_is_refused_before_any_staging(small_ckpt: Path, lock_holder, fake_exporters: list[Path],
                                                   capsys) -> None:
    """The holder's pid comes from the lock itself when it has no staging folder yet."""
    out, holder = lock_holder
    before = contents(out)
    code, text = run_cli(capsys, "-i", small_ckpt, "-o", out, "--overwrite")
    line = error_line(text)
    print(f"exit {code}: {line}")
    assert (code, line) == (2, f"error: -o {out}: another build (pid {holder.pid}) is writing this folder; "
                               "wait for it or pick another -o")
    assert contents(out) == before and fake_exporters == []
    holder.kill()
    holder.wait()
    code, text = run_cli(capsys, "-i", small_ckpt, "-o", out, "--overwrite")
    assert code == 0, text


def test_killed_build_leftover_is_named_and_overwrite_removes_it(buildable_ckpt: Path, small_ckpt: Path,
                                                                 tmp_path: Path, fake_exporters: list[Path],
                                                                 capsys) -> None:
    out = tmp_path / "out"
    killed = start_cli_build(buildable_ckpt, out, tmp_path)
    staging = wait_for_staging(killed, out, with_files=True)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert staging.is_dir() and lock_is_free(out)  # the kernel dropped the dead build's lock
    code, text = run_cli(capsys, "-i", small_ckpt, "-o", out)
    line = error_line(text)
    print(f"exit {code}: {line}")
    assert (code, line) == (2, f"error: -o {out}: holds {staging.name}, left by an interrupted build; "
                               "pass --overwrite to remove it and build")
    assert staging.is_dir() and fake_exporters == []
    code, text = run_cli(capsys, "-i", small_ckpt, "-o", out, "--overwrite")
    assert code == 0, text
    assert {p.name: p.read_text() for p in out.iterdir()} == FAKE_FILES


def test_leftover_beside_an_earlier_bundle_is_named(small_ckpt: Path, tmp_path: Path, fake_exporters: list[Path],
                                                    capsys) -> None:
    out = tmp_path / "out"
    leftover = out / f"{STAGING_PREFIX}999999-abc123"
    leftover.mkdir(parents=True)
    (out / "genai_config.json").write_text("old")
    code, text = run_cli(capsys, "-i", small_ckpt, "-o", out)
    line = error_line(text)
    print(f"exit {code}: {line}")
    assert (code, line) == (2, f"error: -o {out}: folder is not empty (it also holds {leftover.name}, left by an "
                               "interrupted build); pass --overwrite to replace the bundle in it")
    assert leftover.is_dir()


def _write_and_check_lock(ckpt, plan, options, out: Path) -> None:
    assert not lock_is_free(out.parent)  # held while the exporters run
    for name, text in FAKE_FILES.items():
        (out / name).write_text(text)


def _fail(ckpt, plan, options, out: Path) -> None:
    from builder_qwen3vl.ground.errors import BuildError

    raise BuildError("simulated exporter failure")


def _ctrl_c(ckpt, plan, options, out: Path) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("exporter,code", [(_write_and_check_lock, 0), (_fail, 1), (_ctrl_c, 130)],
                         ids=["success", "failure", "ctrl-c"])
@pytest.mark.parametrize("existing", [True, False], ids=["existing-o", "new-o"])
def test_lock_released_after_the_build(exporter, code: int, existing: bool, small_ckpt: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(importlib.import_module("builder_qwen3vl.pipeline"), "write_bundle", exporter)
    out = tmp_path / "new" / "out"
    if existing:
        out.mkdir(parents=True)
        (out / "genai_config.json").write_text("old")
    fds = open_fds()
    got, text = run_cli(capsys, "-i", small_ckpt, "-o", out, "--overwrite")
    assert got == code, text
    assert open_fds() == fds  # the locked descriptor is closed
    if out.exists():
        assert lock_is_free(out) and not list(out.glob(STAGING_PREFIX + "*"))
    else:  # a failed build removes the folders it made
        assert code != 0 and not (tmp_path / "new").exists()
