"""The package's layers: import-linter's contracts in pyproject.toml hold, and they can fail.

The contracts (``[tool.importlinter]``) say which folder may import which: arrows only run down, no
circles between siblings at any depth, type-only imports included (grimp reads ``if TYPE_CHECKING:``
blocks like any other import). ``docs/architecture.md`` draws the floors.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``root`` (its own pyproject.toml), with no cache."""
    env = {"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(root), "HOME": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package and its pyproject.toml in a scratch folder, for contracts checked against a broken import."""
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(REPO / "builder_qwen3vl", root / "builder_qwen3vl",
                    ignore=shutil.ignore_patterns("__pycache__", "data", "*.safetensors"))
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


# An arrow that runs back up, per contract: (module that gains the import, the import line, the contract's name).
UPWARD_ARROWS = [
    ("checkpoint/reader.py", "from ..decoder import moe_experts", "build-time floors"),
    ("ground/contract.py", "from ..checkpoint import config", "build-time floors"),
    ("ground/tokens.py", "from ..runtime import og_run", "the ground imports nothing else of ours"),
    ("decoder/build.py", "from ..testing import checkpoints", "build time needs no run-time, verify or test code"),
    ("plan.py", "from .vision import export", "build-time floors"),
    ("runtime/og_run.py", "from ..bundle import genai_config", "run time stands on the ground"),
    ("verify/static_checks.py", "from ..plan import BuildPlan", "verify stands on run time and the ground"),
    ("serve/engine.py", "from ..plan import BuildPlan", "serve stands on run time and the ground"),
    ("shipped/assembly.py", "from ..testing import checkpoints", "the demo needs no test code"),
    ("vision/proto_stream.py", "from . import placeholders", "no circles"),
]


@pytest.mark.parametrize("module, line, contract", UPWARD_ARROWS, ids=[a[0] for a in UPWARD_ARROWS])
def test_an_upward_arrow_breaks_a_contract(tree_copy: Path, module: str, line: str, contract: str) -> None:
    path = tree_copy / "builder_qwen3vl" / module
    original = path.read_text()
    # Type-only, so the copy needs none of the imported code to run: the contract must catch it all the same.
    path.write_text(original + f"\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    {line}  # noqa\n")
    try:
        result = lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    broken = [ln for ln in result.stdout.splitlines() if "BROKEN" in ln]
    assert any(contract in ln for ln in broken), result.stdout


def test_run_time_loads_no_build_time_code() -> None:
    """What import-linter cannot see: importing a subpackage runs its parents' __init__ too."""
    code = ("import sys, builder_qwen3vl.runtime.og_run, builder_qwen3vl.runtime.conversation, builder_qwen3vl.verify, "
            "builder_qwen3vl.video; print(' '.join(sorted(m for m in sys.modules if m.startswith('builder_qwen3vl'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    floors = {name.split(".")[1] for name in out.split() if name.count(".") >= 1}
    assert floors <= {"ground", "runtime", "verify", "video"}, out
