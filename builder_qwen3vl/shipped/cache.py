"""The user's cache folder and a lock for writing into it (the assembled shipped model, retrained models)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def default_cache_dir() -> Path:
    env = os.environ.get("BUILDER_QWEN3VL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "builder_qwen3vl"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent writers of one cache folder (parallel tests): one writes, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
