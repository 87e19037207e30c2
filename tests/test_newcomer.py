"""A newcomer's clone: the committed tree alone, in an empty folder, installed (not editable) into a new
venv, runs the README's demo and answers correctly; the other user-facing commands start from there too.

The venv borrows the test environment's third-party packages through a .pth file (downloading ~1 GB of
wheels again would test pip, not this project). A directory added that way is not a site directory, so
its .pth files, among them this checkout's editable-install hook, are not run: ``builder_qwen3vl`` comes
from the wheel built from the archive, with only the files the wheel carries.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    assert res.returncode == 0, f"{' '.join(map(str, cmd[:5]))} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing committed to archive")
    top = tmp_path_factory.mktemp("newcomer")
    clone = top / "project"  # nothing beside it: no ../shared, no cache, its own HOME
    clone.mkdir()
    archive = top / "head.tar"
    _run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), "HEAD"])
    with tarfile.open(archive) as tar:
        tar.extractall(clone, filter="data")
    archive.unlink()

    venv = top / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(clone)])
    Path(site, "test-environment-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    home = top / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BUILDER_QWEN3VL"))}
    env.update(HOME=str(home), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    return {"clone": clone, "home": home, "py": str(py), "site": site, "env": env}


# `python -c` and `python -m` put the working directory first on sys.path, so those run from the new HOME
# (inside the clone they would import its source tree); `python examples/demo.py` puts examples/ first.
def test_package_comes_from_the_archive_wheel(newcomer: dict) -> None:
    res = _run([newcomer["py"], "-c", "import builder_qwen3vl.shipped.assembly as m; print(m.__file__)"],
               cwd=newcomer["home"], env=newcomer["env"])
    assert res.stdout.strip().startswith(newcomer["site"])


def test_wheel_holds_no_training_code(newcomer: dict) -> None:
    """Training and evaluation stay in the clone's tools/tiny_model/; the wheel has the shipped model only."""
    installed = {p.name for p in Path(newcomer["site"], "builder_qwen3vl").rglob("*.py")}
    tools = {p.name for p in Path(newcomer["clone"], "tools", "tiny_model").glob("*.py")} - {"__init__.py"}
    assert "training.py" in tools and not installed & tools, sorted(installed & tools)
    assert not Path(newcomer["site"], "tiny_model").exists() and not Path(newcomer["site"], "tools").exists()


def test_demo_answers_as_expected(newcomer: dict) -> None:
    """The README's main job on the bare clone: the shipped model's INT4 bundle answers the held-out question."""
    res = _run([newcomer["py"], "examples/demo.py"], cwd=newcomer["clone"], env=newcomer["env"], timeout=900)
    print(res.stdout)
    answer = re.search(r"^answer: +(.*)$", res.stdout, re.M).group(1)
    expected = re.search(r"^expected: +(\S+)", res.stdout, re.M).group(1)
    assert answer.lower().strip(".") == expected
    assert re.search(r"^picture: +\S+\.png$", res.stdout, re.M) and "times:" in res.stdout
    newcomer["bundle"] = newcomer["clone"] / "demo" / "bundle-int4"


def test_user_commands_run_from_the_install(newcomer: dict) -> None:
    """verify on the demo's bundle, the evaluation script (HF side, 2 questions) and train_tiny's help."""
    if "bundle" not in newcomer:
        pytest.skip("the demo did not build its bundle")
    kw = dict(cwd=newcomer["home"], env=newcomer["env"], timeout=600)
    res = _run([newcomer["py"], "-m", "builder_qwen3vl", "verify", str(newcomer["bundle"])], **kw)
    assert "generat" in (res.stdout + res.stderr).lower()
    tools = newcomer["clone"] / "tools" / "tiny_model"  # not in the wheel: run from the clone, on the installed package
    res = _run([newcomer["py"], str(tools / "evaluate.py"), "--n", "2", "--hf-only"], **kw)
    assert "HF transformers fp32" in res.stdout
    res = _run([newcomer["py"], str(tools / "train_tiny.py"), "--help"], **kw)
    assert "--ship" in res.stdout
