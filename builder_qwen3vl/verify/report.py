"""What ``verify`` found: the passed and failed checks, printed one per line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..ground.errors import BuildError, InputError


class VerifyError(BuildError):
    """The bundle failed a check; exit code 1."""


@dataclass
class VerifyReport:
    bundle: Path
    passed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # failures that are the bundle naming or holding files outside its folder: untrusted input, exit 2
    escapes: list[str] = field(default_factory=list)

    def escape(self, message: str) -> None:
        """A file the bundle names or holds lies outside its folder."""
        self.failures.append(message)
        self.escapes.append(message)

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        out = [f"ok    {line}" for line in self.passed] + [f"FAIL  {line}" for line in self.failures]
        verdict = "passed" if self.ok else f"FAILED ({len(self.failures)} problem(s))"
        out.append(f"verify {self.bundle}: {verdict}")
        return out

    def raise_for_failure(self) -> None:
        """InputError (exit 2) when the bundle reaches outside its folder, as for a checkpoint; else VerifyError."""
        if self.escapes:
            raise InputError(f"verify {self.bundle}: {self.escapes[0]}")
        if self.failures:
            raise VerifyError(f"verify {self.bundle}: {self.failures[0]}")
