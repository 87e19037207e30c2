"""Files the build and the shipped-model cache write get the user's umask (0644 / 0755 by default).

``tempfile.mkdtemp`` makes 0700 folders and safetensors writes 0600 files; a bundle or cache read by
another user, or mounted into a container, must not inherit that.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux: /proc/self/status).

    Elsewhere it is set and restored at once, the only portable way to read it; for that instant another
    thread creating a file would get umask 0.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """chmod ``root`` and everything below it to what a plain ``open`` / ``mkdir`` would have made."""
    mask = current_umask()
    root.chmod(0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            (Path(folder) / name).chmod(0o777 & ~mask)
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(0o666 & ~mask)
