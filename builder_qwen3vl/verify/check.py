"""``verify``: check a built bundle before anyone ships it.

Static checks (no onnxruntime session): every file genai_config.json names exists; each ONNX
model's inputs/outputs have the names, dtypes and ranks og 0.18 feeds and reads; the wide
DeepStack stream has one width everywhere (decoder.hidden_size == vision output width ==
embeddings input/output width == decoder inputs_embeds width == (1 + D) * H, with H read from
the decoder graph's final norm weight); the decoder splits inputs_embeds into 1 + D blocks and
uses every DeepStack block. Graphs are read with ``load_external_data=False``: seconds even for 8B.

Run check: a child process loads the bundle with onnxruntime-genai and generates a few tokens
for a generated test image and for text only (a child, so an abort inside og is reported
rather than killing verify). The contract the checks enforce is og 0.18's (docs/bundle.md).

static_checks.py holds the static checks, og_probe.py the run check, report.py what they found.
"""

from __future__ import annotations

from pathlib import Path

from ..ground.errors import InputError
from ..ground.process_state import preserved_process_state
from .og_probe import run_check
from .report import VerifyReport
from .static_checks import GENAI_CONFIG, static_checks


def verify_bundle(bundle: str | Path, *, run: bool = True, max_new_tokens: int = 4, timeout: float = 600.0) -> VerifyReport:
    """Check ``bundle``; with ``run`` also generate with og. Failures are collected, not raised.

    The calling process is left as it was found (``process_state.preserved_process_state``).
    """
    with preserved_process_state():
        return _verify_bundle(Path(bundle), run, max_new_tokens, timeout)


def _verify_bundle(bundle: Path, run: bool, max_new_tokens: int, timeout: float) -> VerifyReport:
    if not bundle.is_dir():
        raise InputError(f"verify {bundle}: expected a bundle folder (with {GENAI_CONFIG}), found {'a file' if bundle.exists() else 'nothing'}")
    report = VerifyReport(bundle)
    facts = static_checks(bundle, report)
    if not run:
        report.passed.append("run: skipped (--static-only)")
    elif not report.ok:
        report.failures.append("run: skipped because the static checks failed (og would fail less clearly)")
    else:
        run_check(bundle, report, facts, max_new_tokens, timeout)
    return report
