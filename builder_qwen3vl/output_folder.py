"""Output-folder rules and atomic assembly of the bundle.

The bundle is written into a hidden temporary folder beside ``-o`` and renamed into place at
the end, so an interrupted or failed build never leaves a half-written bundle at ``-o``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import BuildError, InputError

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
    if not parent.is_dir():
        raise InputError(f"-o {output_dir}: {parent} is a file, expected a folder on the output path")
    # os.access honours read-only mounts (EROFS) even for root, which ignores permission bits.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"-o {output_dir}: cannot write in {parent} (read-only or no permission)")


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
    """Yield a temporary folder beside ``output_dir``; move it into place only if the block succeeds.

    On any failure, Ctrl-C or SIGTERM the temporary folder is removed. A full disk (or any
    other OS error while writing into the bundle) becomes a one-line ``BuildError`` (exit 1).
    """
    out = output_dir.resolve()
    created = _first_missing(out.parent)  # parent folders we create are removed again on failure
    with _sigterm_as_exception():
        staging = _make_staging(output_dir, out)
        done = False
        try:
            yield staging
            _replace(staging, out)
            done = True
        except _Terminated:
            log.error("terminated: removed the partial bundle %s", staging)
            raise SystemExit(143) from None
        except OSError as e:
            mapped = _write_error(e, staging, output_dir)
            if mapped is None:
                raise
            raise mapped from e
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            if not done and created is not None:
                _remove_empty_parents(out.parent, stop=created.parent)


def _first_missing(folder: Path) -> Path | None:
    """The outermost ancestor of ``folder`` (or itself) that does not exist yet."""
    missing = None
    while not folder.exists():
        missing, folder = folder, folder.parent
    return missing


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _make_staging(output_dir: Path, out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    except OSError as e:
        raise InputError(f"-o {output_dir}: cannot create a folder in {out.parent} ({e.strerror or e})") from e


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _write_error(e: OSError, staging: Path, output_dir: Path) -> BuildError | None:
    """A one-line BuildError for an OS error while writing, naming the file as the user will know it."""
    filename = str(e.filename) if e.filename else None
    in_bundle = filename is not None and Path(filename).resolve().is_relative_to(staging)
    shown = (output_dir / Path(filename).resolve().relative_to(staging)) if in_bundle else filename
    if e.errno in _DISK_FULL:
        what = f"writing {shown}" if shown else "writing the bundle"
        return BuildError(
            f"-o {output_dir}: no space left on device while {what}; removed the partial bundle "
            "(free some space, or pick another -o / -c, and run again)"
        )
    if in_bundle:
        return BuildError(f"-o {output_dir}: writing {shown} failed: {e.strerror or e}; removed the partial bundle")
    return None  # not about the bundle: the caller reports it as it is


def _replace(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
