"""``python -m builder_qwen3vl verify``: a built bundle checked against og's contract, statically and by a run."""

from .check import verify_bundle
from .report import VerifyError, VerifyReport

__all__ = ["VerifyError", "VerifyReport", "verify_bundle"]
