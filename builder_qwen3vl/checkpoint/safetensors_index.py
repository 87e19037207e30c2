"""Reading safetensors headers without loading tensors.

The builder validates every tensor's presence, dtype and shape before the slow exports
start, so a truncated shard or a wrong shape fails in a second with the file's name.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

# safetensors dtype tags of the float weights we read
FLOAT_DTYPES = {"F32", "F16", "BF16"}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Return the tensors listed in one safetensors file, checking the file is complete."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise InputError(f"{path}: truncated safetensors file (no header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise InputError(f"{path}: truncated or corrupt safetensors file (header length {header_len})")
            header = json.loads(f.read(header_len))
    except OSError as e:
        raise InputError(f"{path}: cannot read safetensors file ({e.strerror})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: corrupt safetensors header ({e})") from e
    header.pop("__metadata__", None)
    data_size = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        begin, end = meta["data_offsets"]
        if end > data_size:
            raise InputError(
                f"{path}: truncated safetensors file: tensor '{name}' ends at byte {end} of the data "
                f"section but the file has only {data_size}"
            )
        tensors[name] = TensorInfo(name, meta["dtype"], tuple(meta["shape"]), path)
    return tensors


def read_checkpoint_tensors(folder: Path) -> dict[str, TensorInfo]:
    """List every tensor of a single-file or sharded (model.safetensors.index.json) checkpoint."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{index}: expected a JSON object with a 'weight_map' ({e})") from e
        tensors: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = folder / shard
            if not shard_path.is_file():
                raise InputError(f"{index}: names shard '{shard}', which is missing from {folder}")
            tensors.update(read_header(shard_path))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise InputError(f"{index}: tensor '{missing[0]}' is listed but not in its shard ({len(missing)} missing)")
        return tensors
    if single.is_file():
        return read_header(single)
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        tensors = {}
        for shard in shards:
            tensors.update(read_header(shard))
        return tensors
    raise InputError(f"{folder}: no weights found (expected model.safetensors or model.safetensors.index.json)")
