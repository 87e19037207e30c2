"""``build()`` and ``verify_bundle()`` leave the calling process as they found it: os.environ, sys.path, every
logger's level, handlers, filters and propagate, logging.captureWarnings, warnings.filters, the umask, the
working folder and the live threads (``process_state.snapshot``), whether the call succeeds or fails.

The main row runs in a fresh interpreter, so the third-party imports (and what they change) happen inside
the calls; loggers those imports make must end as the same imports in another fresh interpreter leave them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from builder_qwen3vl import BuildOptions, InputError, build
from builder_qwen3vl.ground.logs import configure_logging
from builder_qwen3vl.ground.process_state import differences, snapshot

RESULT = "RESULT "
# The command line sets these for its own process (tests call its main() in this process): an application
# calling build() starts without them.
CLI_SETTINGS = ("TORCH_LOGS", "TRANSFORMERS_VERBOSITY")

CALLS = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from builder_qwen3vl import BuildOptions, InputError, build
    from builder_qwen3vl.ground.process_state import differences, snapshot
    from builder_qwen3vl.verify import verify_bundle

    ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
    first = snapshot()
    imported_before = set(sys.modules)
    diffs = {}

    def call(name, fn):
        before = snapshot()
        fn()
        diffs[name] = differences(before, snapshot())

    def failing_build():  # fails after the og builder, torch and onnxruntime's quantizer were imported
        try:
            build(BuildOptions(input=ckpt, output=out / "bad", precision="int4", extra_options={"block_size": "abc"}))
        except InputError as e:
            print("failed as expected:", e, file=sys.stderr)
        else:
            raise AssertionError("the build with block_size=abc did not fail")

    def verify():
        report = verify_bundle(out / "first")
        assert report.ok, report.lines()

    call("build() failing with InputError", failing_build)
    call("build()", lambda: build(BuildOptions(input=ckpt, output=out / "first", precision="fp32")))
    call("verify_bundle()", verify)
    call("second build()", lambda: build(BuildOptions(input=ckpt, output=out / "second", precision="int4")))
    last = snapshot()
    print(%r + json.dumps({
        "diffs": diffs,
        "new_loggers": {name: state.describe() for name, state in last.loggers.items() if name not in first.loggers},
        "new_modules": [name for name in sys.modules if name not in imported_before],
    }))
''' % RESULT)

REFERENCE = textwrap.dedent('''
    import importlib, json, sys
    import builder_qwen3vl, builder_qwen3vl.verify
    from builder_qwen3vl.ground.process_state import snapshot

    first = snapshot()
    for name in json.loads(sys.stdin.read()):
        if not name.startswith("__"):
            try:
                importlib.import_module(name)
            except Exception:
                pass
    last = snapshot()
    print(%r + json.dumps({name: state.describe() for name, state in last.loggers.items() if name not in first.loggers}))
''' % RESULT)


@pytest.fixture(scope="module")
def buildable_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint og can build and run (real tokenizer)."""
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("buildable"), tiny_config())


def app_environment(tmp_path: Path) -> dict[str, str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in CLI_SETTINGS}
    return {**env, "TMPDIR": str(scratch)}


def run_python(code: str, *args: str, env: dict[str, str], stdin: str = "") -> tuple[object, str]:
    res = subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True, text=True,
                         env=env, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    line = next((line for line in res.stdout.splitlines() if line.startswith(RESULT)), None)
    assert line is not None, res.stdout[-2000:] + res.stderr[-2000:]
    return json.loads(line[len(RESULT):]), res.stderr


def test_calls_in_a_fresh_process_leave_no_trace(buildable_ckpt: Path, tmp_path: Path) -> None:
    env = app_environment(tmp_path)
    result, stderr = run_python(CALLS, str(buildable_ckpt), str(tmp_path / "bundles"), env=env)
    for call, lines in result["diffs"].items():
        print(f"{call}: {len(lines)} difference(s)" + "".join(f"\n  {line}" for line in lines))
    assert all(lines == [] for lines in result["diffs"].values()), result["diffs"]
    # onnxruntime's quantizer calls logging.basicConfig on import: it must not have configured the root logger
    assert " [INFO] - " not in stderr, stderr[-2000:]

    reference, _ = run_python(REFERENCE, env=env, stdin=json.dumps(result["new_modules"]))
    changed = {name: (state, reference.get(name)) for name, state in result["new_loggers"].items()
               if reference.get(name, _DEFAULT_LOGGER) != state}
    print(f"{len(result['new_loggers'])} loggers made during the calls; as a plain import leaves them except: {changed}")
    assert changed == {}


_DEFAULT_LOGGER = "level NOTSET, handlers [none], filters [none], propagate True"


def test_build_and_verify_in_this_process(buildable_ckpt: Path, tmp_path: Path) -> None:
    """pytest's own handlers, the application's logger levels and a umask of its own all survive."""
    from builder_qwen3vl.verify import verify_bundle

    app = logging.getLogger("an.application")
    app.setLevel(logging.DEBUG)
    previous_umask = os.umask(0o027)
    try:
        before = snapshot()
        build(BuildOptions(input=buildable_ckpt, output=tmp_path / "out", precision="fp32"))
        assert verify_bundle(tmp_path / "out", run=False).ok
        with pytest.raises(InputError, match="folder is not empty"):
            build(BuildOptions(input=buildable_ckpt, output=tmp_path / "out", precision="fp32"))
        lines = differences(before, snapshot())
    finally:
        os.umask(previous_umask)
    assert lines == [], "\n".join(lines)


def test_failing_verify_leaves_no_trace(tmp_path: Path) -> None:
    before = snapshot()
    with pytest.raises(InputError, match="expected a bundle folder"):
        from builder_qwen3vl.verify import verify_bundle

        verify_bundle(tmp_path / "missing")
    assert differences(before, snapshot()) == []


def test_configure_logging_replaces_its_own_setup() -> None:
    """The command line configures its process; calling it again (tests call main() repeatedly) replaces that
    setup instead of stacking handlers, and a verbose call's root level and warning capture do not outlive it."""
    root, ours = logging.getLogger(), logging.getLogger("builder_qwen3vl")
    level = root.level
    try:
        for verbose in (True, False, False, True, False):
            configure_logging(verbose)
        marked = [h for h in root.handlers + ours.handlers if getattr(h, "_builder_qwen3vl_handler", False)]
        assert len(marked) == 2, marked  # one for our lines, one for other libraries' errors
        assert root.level == level and not logging._warnings_showwarning
    finally:
        for logger in (root, ours):
            for handler in [h for h in logger.handlers if getattr(h, "_builder_qwen3vl_handler", False)]:
                logger.removeHandler(handler)
