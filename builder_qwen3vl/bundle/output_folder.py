"""Output-folder rules and the staged assembly of the bundle.

The bundle is written into a hidden staging folder *inside* ``-o`` (same device, so moving files in is a
rename) and its files are moved into ``-o`` one by one at the end. ``-o`` itself is never renamed: it may
be a mount point (a container volume), where renaming fails with EBUSY. An interrupted or failed build
removes the staging folder and leaves an earlier bundle at ``-o`` as it was.

``--overwrite`` replaces an earlier bundle and nothing else: it refuses folders that hold the input, the
working folder or the home folder, and folders holding files a bundle does not have.

One build writes a given ``-o`` at a time: a build holds an exclusive ``flock`` on the ``-o`` folder itself
(no lock file to leave behind) from before it reads what ``-o`` holds until its bundle is in place. The
kernel drops the lock when the process ends, however it ends, so a staging folder in an ``-o`` nobody holds
was left by a killed build; one that another build holds is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..ground import contract
from ..ground.errors import BuildError, InputError
from ..ground.permissions import apply_umask

log = logging.getLogger(__name__)

# A staging folder's name carries the pid of the build that made it: ".builder_qwen3vl-staging-<pid>-<random>".
STAGING_PREFIX = ".builder_qwen3vl-staging-"
_STAGING_PID = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-")
_SHOWN_FOREIGN = 3  # how many foreign names an error lists
_LOCK_ATTEMPTS = 5  # -o removed and made again by other builds between our open and our lock, at most this often


def is_staging_folder(path: Path) -> bool:
    return path.name.startswith(STAGING_PREFIX) and path.is_dir() and not path.is_symlink()


def is_bundle_entry(path: Path) -> bool:
    """A file a bundle has (any version's), or a staging folder an interrupted build left behind."""
    if path.name.startswith(STAGING_PREFIX):
        return is_staging_folder(path)
    return path.name in contract.BUNDLE_FILE_NAMES and (path.is_symlink() or path.is_file())


def check_output_path(input_dir: Path, output_dir: Path) -> None:
    """Refuse, touching nothing, an ``-o`` that is or holds the input, is a file, or cannot be written."""
    inp, out = input_dir.resolve(), output_dir.resolve()
    if out == inp or inp in out.parents:
        raise InputError(f"-o {output_dir}: must not be the input folder or inside it ({input_dir})")
    if out in inp.parents:
        raise InputError(f"-o {output_dir}: contains the input folder {input_dir}; expected a bundle folder outside it")
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {output_dir}: exists and is a file; expected a folder path")
    _check_writable(output_dir, out)


def check_output_contents(output_dir: Path, overwrite: bool) -> None:
    """Refuse, touching nothing, an ``-o`` whose replacement could destroy the user's files.

    Run while holding ``claimed_output``: then every staging folder in ``-o`` is a killed build's.
    """
    out = output_dir.resolve()
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise InputError(_not_empty_message(output_dir, entries))
    if entries:
        _check_replaceable(output_dir, out, entries)


def _not_empty_message(output_dir: Path, entries: list[Path]) -> str:
    stale = [p.name for p in entries if is_staging_folder(p)]
    if not stale:
        return f"-o {output_dir}: folder is not empty; pass --overwrite to replace the bundle in it"
    names = ", ".join(stale)
    left = "left by an interrupted build" if len(stale) == 1 else "left by interrupted builds"
    if len(stale) == len(entries):
        them = "it" if len(stale) == 1 else "them"
        return f"-o {output_dir}: holds {names}, {left}; pass --overwrite to remove {them} and build"
    return (f"-o {output_dir}: folder is not empty (it also holds {names}, {left}); "
            "pass --overwrite to replace the bundle in it")


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
def claimed_output(output_dir: Path) -> Iterator[None]:
    """Hold ``output_dir`` for one build: make it if missing and lock it against other builds until the block ends.

    A second build into a held folder does not wait: it fails at once with an ``InputError`` (exit 2) that
    names the holder's pid. Builds run for minutes to hours, and two builds writing one bundle folder in
    turn, the second replacing the first, is rarely what was meant.

    If the block fails (an error, Ctrl-C, SIGTERM), the folders this call made are removed again if empty.
    """
    out = output_dir.resolve()
    created = _first_missing(out)
    done = False
    with _sigterm_as_exception():
        try:
            fd = _lock(output_dir, out)
            try:
                yield
                done = True
            finally:
                if not done and created is not None:
                    _remove_empty_folders(out, stop=created.parent)  # still locked: no other build is in it
                os.close(fd)  # releases the lock
        except _Terminated:
            log.error("terminated: stopped before writing the bundle")
            raise SystemExit(143) from None


def _lock(output_dir: Path, out: Path) -> int:
    """An open descriptor of ``out`` holding its exclusive flock (``out`` made first if missing)."""
    for _ in range(_LOCK_ATTEMPTS):
        _make_folder(output_dir, out)
        try:
            fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # removed by a failing build right after we made it: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _lock_holder(fd, out)
            os.close(fd)
            raise InputError(_busy_message(output_dir, pid)) from None
        except OSError as e:  # a file system without flock on folders (some network mounts)
            log.warning("-o %s: cannot lock the folder (%s); a second build into it at the same time would not be "
                        "noticed", output_dir, e.strerror or e)
            return fd
        if _is_folder_at(fd, out):
            return fd
        os.close(fd)  # we locked a folder a failing build removed meanwhile: lock the one there now
    raise InputError(f"-o {output_dir}: other builds keep removing and making this folder; pick another -o")


def _make_folder(output_dir: Path, out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"-o {output_dir}: cannot create a folder in {out} ({e.strerror or e})") from e


def _is_folder_at(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _busy_message(output_dir: Path, pid: int | None) -> str:
    who = f"another build (pid {pid})" if pid else "another build"
    return f"-o {output_dir}: {who} is writing this folder; wait for it or pick another -o"


def _lock_holder(fd: int, out: Path) -> int | None:
    """The pid holding the flock on ``fd``'s folder: from /proc/locks (Linux), else from its staging folder's name."""
    return _flock_owner(fd) or _staging_owner(out)


def _flock_owner(fd: int) -> int | None:
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2195572 0 EOF"; a waiter has "->" second
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key and fields[4].isdigit():
            return int(fields[4]) or None  # 0: a process outside our pid namespace
    return None


def _staging_owner(out: Path) -> int | None:
    with contextlib.suppress(OSError):
        for path in out.iterdir():
            if m := _STAGING_PID.match(path.name):
                return int(m.group(1))
    return None


def remove_stale_staging(out: Path) -> None:
    """Remove the staging folders killed builds left in ``out``; only while holding ``claimed_output``."""
    for path in sorted(out.iterdir()):
        if is_staging_folder(path):
            log.info("removing %s, left by an interrupted build", path)
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staged_output(output_dir: Path) -> Iterator[Path]:
    """Yield a staging folder inside ``output_dir``; move its files into ``output_dir`` only if the block succeeds.

    Run inside ``claimed_output``, which makes ``output_dir`` and removes it again if the build fails. On any
    failure, Ctrl-C or SIGTERM the staging folder is removed. A full disk (or any other OS error while writing
    into the bundle) becomes a one-line ``BuildError`` (exit 1).
    """
    out = output_dir.resolve()
    with _sigterm_as_exception():
        staging = _make_staging(output_dir, out)
        try:
            yield staging
            _install(staging, out)
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
        return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
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

    An earlier bundle stays readable until each of its files is replaced; only bundle files are removed (and
    staging folders: this build holds ``claimed_output``, so any other one was left by a killed build).
    """
    apply_umask(staging)
    new = {p.name for p in staging.iterdir()}
    for name in sorted(new):
        os.replace(staging / name, out / name)
    staging.rmdir()
    remove_stale_staging(out)
    for path in sorted(out.iterdir()):
        if path.name not in new and is_bundle_entry(path):
            path.unlink()
