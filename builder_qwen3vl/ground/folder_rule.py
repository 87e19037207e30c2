"""The one rule for files read out of a folder someone else made (a checkpoint, a bundle): once every link is
followed, the file lies inside the folder.

The Hugging Face hub cache is the one layout where files live elsewhere by design: ``<repo>/snapshots/<rev>/<file>``
is a relative link to ``<repo>/blobs/<sha>``. When the folder is such a snapshot, that repository's own blobs
folder counts as inside too; nothing else does.
"""

from __future__ import annotations

from pathlib import Path


# The hub cache names a repository's folder "<kind>s--<owner>--<name>".
HUB_REPO_PREFIXES = ("models--", "datasets--", "spaces--")


def snapshot_blobs(root: Path) -> Path | None:
    """``<repo>/blobs`` when the resolved folder ``root`` is a hub cache snapshot ``<repo>/snapshots/<rev>``."""
    repo = root.parent.parent
    blobs = repo / "blobs"
    in_cache = root.parent.name == "snapshots" and repo.name.startswith(HUB_REPO_PREFIXES)
    return blobs.resolve() if in_cache and blobs.is_dir() else None


def allowed_roots(folder: str | Path) -> tuple[Path, ...]:
    """The resolved folders a file of ``folder`` may lie in: the folder and, for a hub cache snapshot, its blobs."""
    root = Path(folder).resolve()
    blobs = snapshot_blobs(root)
    return (root,) if blobs is None else (root, blobs)


def lies_inside(folder: str | Path, resolved: Path) -> bool:
    """Whether ``resolved`` (a path with its links followed) lies inside ``folder`` by the rule above."""
    return any(resolved.is_relative_to(root) for root in allowed_roots(folder))
