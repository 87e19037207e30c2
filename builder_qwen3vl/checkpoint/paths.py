"""Which files of a checkpoint folder the build may read or copy, and reading them with a size bound.

The checkpoint folder (``-i``) is untrusted data: a link, or a shard name in model.safetensors.index.json,
must not make the build read a file from elsewhere on the machine or copy it into the bundle. Every file is
taken from where its links lead (``Path.resolve``), and that place must be inside the folder, by the rule
a bundle's files follow too (``ground/folder_rule.py``: a hub cache snapshot's own blobs count as inside).
"""

from __future__ import annotations

import stat
from pathlib import Path

from ..ground.errors import InputError
from ..ground.folder_rule import allowed_roots, lies_inside

MiB = 1 << 20
# Largest JSON or text file read whole (tokenizer.json is ~11 MiB for Qwen; configs are a few KiB).
MAX_TEXT_BYTES = 64 * MiB


def _resolved(path: Path) -> Path:
    """``path`` with every link followed; InputError for a link loop or a name the OS cannot take."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: a link loop (Python < 3.13)
        raise InputError(f"{path}: cannot follow its links ({e})") from None


def inside_checkpoint(folder: Path, path: Path) -> Path:
    """Where ``path`` (a file of checkpoint ``folder``) really is, once links are followed; InputError (one
    line naming ``path``) when that is outside ``folder`` and, for a hub cache snapshot, its repository's blobs."""
    roots = allowed_roots(_resolved(folder))
    target = _resolved(path)
    if lies_inside(folder, target):
        return target
    blobs = roots[1] if len(roots) > 1 else None
    what = "is a link to a file outside the checkpoint folder" if path.is_symlink() else "is outside the checkpoint folder"
    allowed = f"a file inside {folder}" + (f" or its Hugging Face cache's {blobs}" if blobs is not None else "")
    raise InputError(f"{path}: {what}; expected {allowed}")


def regular_file(folder: Path, path: Path, limit: int = MAX_TEXT_BYTES) -> tuple[Path, int]:
    """``inside_checkpoint(folder, path)`` and its size, checked to be a regular file of at most ``limit`` bytes
    (a FIFO or a device would block or never end)."""
    target = inside_checkpoint(folder, path)
    try:
        info = target.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: is not a regular file; expected a file")
    if info.st_size > limit:
        raise InputError(f"{path}: {info.st_size} bytes; expected at most {limit // MiB} MiB for this file")
    return target, info.st_size


def read_text(folder: Path, path: Path, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of checkpoint file ``path``, read from inside ``folder`` and at most ``limit`` bytes."""
    target, _ = regular_file(folder, path, limit)
    try:
        with target.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > limit:  # grew since stat
        raise InputError(f"{path}: more than {limit // MiB} MiB; expected at most {limit // MiB} MiB for this file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); expected a UTF-8 file") from None
