"""Write a trained folder as the files shipped in the wheel (builder_qwen3vl/shipped/data/tiny_shapes/)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from builder_qwen3vl.shipped import assembly
from builder_qwen3vl.shipped.table import table_sha256

log = logging.getLogger(__name__)


def ship(trained: Path, dest: Path | None = None) -> Path:
    """The weights without the embedding table (assembly.py regenerates it), the config files and the record."""
    from safetensors.numpy import load_file, save_file

    dest = dest or assembly.shipped_dir()
    record = assembly.read_record(trained)
    tensors = load_file(str(trained / assembly.WEIGHTS))
    table = tensors.pop(assembly.TABLE_NAME)
    if table_sha256(table) != record["parameters"]["embedding_table_sha256"]:
        raise ValueError(f"{trained / assembly.WEIGHTS}: its embedding table is not the one the training record names")
    dest.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "fingerprint": assembly.fingerprint_id(record["fingerprint"])}
    save_file(tensors, str(dest / assembly.WEIGHTS), metadata=metadata)
    for name in assembly.CONFIG_FILES + (assembly.RECORD,):
        shutil.copyfile(trained / name, dest / name)
    log.info("shipped %s (%.1f MB without the table) into %s", trained.name,
             (dest / assembly.WEIGHTS).stat().st_size / 1e6, dest)
    return dest
