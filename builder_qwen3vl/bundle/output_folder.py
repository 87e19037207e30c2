"""Output-folder rules and the staged assembly of the bundle.

The bundle is written into a hidden staging folder *inside* ``-o`` (same device, so moving files in is a
rename) and its files are moved into ``-o`` one by one at the end. ``-o`` itself is never renamed: it may
be a mount point (a container volume), where renaming fails with EBUSY. An interrupted or failed build
removes the staging folder and leaves an earlier bundle at ``-o`` as it was.

``--overwrite`` replaces an earlier bundle and nothing else: it refuses folders that hold the input, the
working folder or the home folder, and folders holding files a bundle does not have.
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

from . import contract
from ..errors import BuildError, InputError
from .permissions import apply_umask

log = logging.getLogger(__name__)

STAGING_PREFIX = ".builder_qwen3vl-staging-"
_SHOWN_FOREIGN = 3  # how many foreign names an error lists


def is_bundle_entry(path: Path) -> bool:
    """A file a bundle has (any version's), or a staging folder an interrupted build left behind."""
    if path.name.startswith(STAGING_PREFIX):
        return path.is_dir() and not path.is_symlink()
    return path.name in contract.BUNDLE_FILE_NAMES and (path.is_symlink() or path.is_file())


def check_output_folder(input_dir: Path, output_dir: Path, overwrite: bool) -> None:
    """Refuse, touching nothing, every ``-o`` whose replacement could destroy the user's files."""
    inp, out = input_dir.resolve(), output_dir.resolve()
    if out == inp or inp in out.parents:
        raise InputError(f"-o {output_dir}: must not be the input folder or inside it ({input_dir})")
    if out in inp.parents:
        raise InputError(f"-o {output_dir}: contains the input folder {input_dir}; expected a bundle folder outside it")
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {output_dir}: exists and is a file; expected a folder path")
    if out.is_dir():
        entries = sorted(out.iterdir())
        if entries and not overwrite:
            raise InputError(f"-o {output_dir}: folder is not empty; pass --overwrite to replace the bundle in it")
        if entries:
            _check_replaceable(output_dir, out, entries)
    _check_writable(output_dir, out)


def _check_replaceable(output_dir: Path, out: Path, entries: list[Path]) -> None:
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        where = "the working folder" if out == cwd else f"an ancestor of the working folder {cwd}"
        raise InputError(f"--overwrite -o {output_dir}: is {where}; expected a bundle folder of its own")
    if out == Path.home().resolve():
        raise InputError(f"--overwrite -o {output_dir}: is the home folder; expected a bundle folder of its own")
    foreign = [p.name + ("/" if p.is_dir() else "") for p in entries if not is_bundle_entry(p)]
    if foreign:
        shown = ", ".join(foreign[:_SHOWN_FOREIGN]) + (f" and {len(foreign) - _SHOWN_FOREIGN} more"
                                                        if len(foreign) > _SHOWN_FOREIGN else "")
        raise InputError(f"--overwrite -o {output_dir}: holds files a bundle does not have ({shown}); "
                         "move them away or pick another -o (--overwrite only replaces an earlier bundle)")


def _check_writable(output_dir: Path, out: Path) -> None:
    folder = out
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"-o {output_dir}: {folder} is a file, expected a folder on the output path")
    # os.access honours read-only mounts (EROFS) even for root, which ignores permission bits.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"-o {output_dir}: cannot write in {folder} (read-only or no permission)")


def check_free_space(output_dir: Path, needed: int, what: str) -> None:
    """Refuse up front when the output device cannot hold ``needed`` bytes (an estimate, see ``what``)."""
    folder = output_dir.resolve()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    log.info("output device: %.2f GB free, the build needs about %.2f GB (%s)", free / 1e9, needed / 1e9, what)
    if free < needed:
        raise InputError(f"-o {output_dir}: {free / 1e9:.2f} GB free on its device, the build needs about "
                         f"{needed / 1e9:.2f} GB ({what}); free some space or pick another -o")


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
    """Yield a staging folder inside ``output_dir``; move its files into ``output_dir`` only if the block succeeds.

    On any failure, Ctrl-C or SIGTERM the staging folder is removed (and ``output_dir`` with the parents
    this call created, if they are still empty). A full disk (or any other OS error while writing into the
    bundle) becomes a one-line ``BuildError`` (exit 1).
    """
    out = output_dir.resolve()
    created = _first_missing(out)
    with _sigterm_as_exception():
        staging = _make_staging(output_dir, out)
        done = False
        try:
            yield staging
            _install(staging, out)
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
                _remove_empty_folders(out, stop=created.parent)


def _first_missing(folder: Path) -> Path | None:
    """The outermost ancestor of ``folder`` (or itself) that does not exist yet."""
    missing = None
    while not folder.exists():
        missing, folder = folder, folder.parent
    return missing


def _remove_empty_folders(folder: Path, stop: Path) -> None:
    while folder != stop:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _make_staging(output_dir: Path, out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as e:
        raise InputError(f"-o {output_dir}: cannot create a folder in {out} ({e.strerror or e})") from e


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


def _install(staging: Path, out: Path) -> None:
    """Move the staged files over the old ones (each an atomic rename), then drop old files the new bundle lacks.

    An earlier bundle stays readable until each of its files is replaced; only bundle files are removed.
    """
    apply_umask(staging)
    new = {p.name for p in staging.iterdir()}
    for name in sorted(new):
        os.replace(staging / name, out / name)
    staging.rmdir()
    for path in sorted(out.iterdir()):
        if path.name in new or not is_bundle_entry(path):
            continue
        if path.name.startswith(STAGING_PREFIX):  # left by a build that was killed (SIGKILL, power loss)
            log.info("removing %s, left by an interrupted build", path)
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
