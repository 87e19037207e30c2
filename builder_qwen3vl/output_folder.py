"""Output-folder rules and atomic assembly of the bundle.

The bundle is written into a hidden temporary folder beside ``-o`` and renamed into place at
the end, so an interrupted or failed build never leaves a half-written bundle at ``-o``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

log = logging.getLogger(__name__)


def check_output_folder(input_dir: Path, output_dir: Path, overwrite: bool) -> None:
    """Reject output locations that would clobber the input, a file, or an existing bundle."""
    inp, out = input_dir.resolve(), output_dir.resolve()
    if out == inp or inp in out.parents:
        raise InputError(f"-o {output_dir}: must not be the input folder or inside it ({input_dir})")
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {output_dir}: exists and is a file; expected a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"-o {output_dir}: folder is not empty; pass --overwrite to replace it")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"-o {output_dir}: cannot write in {parent}")


class _Terminated(BaseException):
    """SIGTERM turned into an exception so the staging folder is cleaned like on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def staged_output(output_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``output_dir``; move it into place only if the block succeeds."""
    out = output_dir.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        with _sigterm_as_exception():
            yield staging
            _replace(staging, out)
    except _Terminated:
        log.error("terminated: removed the partial bundle %s", staging)
        raise SystemExit(143) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
