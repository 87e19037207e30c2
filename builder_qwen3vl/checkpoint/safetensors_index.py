"""Reading safetensors headers without loading tensors.

The builder validates every tensor's presence, dtype and shape before the slow exports
start, so a truncated shard or a wrong shape fails in a second with the file's name.

Every header is validated whole, for every tensor (also ones the build never reads), by the installed
``safetensors`` library itself (``safe_open`` parses and checks the header and maps the file, reading no
tensor): known dtypes, non-negative integer shapes, ``data_offsets`` spanning exactly shape x dtype size,
tensors covering the data section back to back from 0 with no overlap or gap up to the end of the file, and
``__metadata__`` a string -> string map. Checked here, as the library accepts them: duplicate tensor names
and keys other than dtype, shape and data_offsets. Shard names in model.safetensors.index.json, and the
shards themselves, must lie inside the checkpoint folder (paths.py).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..ground.errors import InputError
from .json_files import read_json, show
from .paths import regular_file

# safetensors dtype tags of the float weights we read
FLOAT_DTYPES = {"F32", "F16", "BF16"}
# The header length the safetensors library accepts (its MAX_HEADER_SIZE).
_MAX_HEADER = 100_000_000
_TENSOR_KEYS = {"dtype", "shape", "data_offsets"}
_METADATA = "__metadata__"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path


def _header_bytes(path: Path, where: Path) -> tuple[bytes, int]:
    """The header and the size of the data section after it; InputError for a file too short for its header."""
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise InputError(f"{where}: truncated safetensors file (no header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise InputError(f"{where}: truncated or corrupt safetensors file (header length {header_len})")
            return f.read(header_len), size - 8 - header_len
    except OSError as e:
        raise InputError(f"{where}: cannot read safetensors file ({e.strerror or e})") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object with no key given twice (the library keeps one of the two silently)."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"{show(twice, 200)} appears twice in one object")
    return doc


def _parse_header(header: bytes, where: Path) -> dict[str, Any]:
    try:
        doc = json.loads(header.decode("utf-8"), object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InputError(f"{where}: corrupt safetensors header (nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{where}: corrupt safetensors header ({e})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{where}: corrupt safetensors header (a JSON {type(doc).__name__}); expected an object "
                         "mapping tensor names to {dtype, shape, data_offsets}")
    return doc


def _check_not_truncated(doc: dict[str, Any], data_size: int, where: Path) -> None:
    """The common corruption, named plainly: a tensor ending past the end of the file."""
    for name, meta in doc.items():
        offsets = meta.get("data_offsets") if isinstance(meta, dict) and name != _METADATA else None
        if isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets) \
                and offsets[1] > data_size:
            raise InputError(f"{where}: truncated safetensors file: tensor {show(name, 200)} ends at byte {offsets[1]} of the "
                             f"data section but the file has only {data_size}")


# Bits per element of the dtypes the library knows, only to name the tensor whose offsets do not match its
# shape when the library refuses a header for that (its message does not say which).
_DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
               "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
               "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}


def _misfit(doc: dict[str, Any]) -> str | None:
    """The first tensor whose data_offsets do not span shape x dtype size, described; None if none is found."""
    for name, meta in doc.items():
        if name == _METADATA or not isinstance(meta, dict) or meta.get("dtype") not in _DTYPE_BITS:
            continue
        shape, offsets = meta.get("shape"), meta.get("data_offsets")
        if not (isinstance(shape, list) and len(shape) <= 64 and isinstance(offsets, list) and len(offsets) == 2
                and all(type(v) is int and 0 <= v < 1 << 64 for v in shape + offsets)):
            continue
        elements = math.prod(shape)
        if (offsets[1] - offsets[0]) * 8 != elements * _DTYPE_BITS[meta["dtype"]]:
            return (f"tensor {show(name, 200)} is {meta['dtype']} of shape {shape} ({elements} elements) but its data_offsets "
                    f"{offsets} span {offsets[1] - offsets[0]} bytes")
    return None


# What a header refused by the library should have been, by the library's error text.
_EXPECTED = (
    ("invalid offset", "the tensors' data_offsets, in offset order, to cover the data section back to back "
                       "from byte 0 (no overlap, no gap)"),
    ("not fully covered", "the last tensor to end where the file ends (no bytes after it)"),
    ("invalid shape, data type, or offset", "each tensor's data_offsets to span its shape x dtype size in bytes"),
    ("overflow", "each tensor's data_offsets to span its shape x dtype size in bytes"),
    ("", "an object mapping each tensor name to {dtype, shape, data_offsets} with a known dtype, non-negative "
         "integer shape and two integer offsets, and __metadata__ a string -> string map"),
)


def _library_check(path: Path, doc: dict[str, Any], where: Path) -> None:
    """The safetensors library's own validation of the whole header; InputError (one line) with what it found."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            return
    except (SafetensorError, OSError, ValueError) as e:
        found = " ".join(str(e).split()).replace("Error while deserializing header: ", "").replace("`", "'")
    unknown = re.search(r"unknown variant '([^']*)', expected (one of [^\n]*?)(?: at line \d+ column \d+)?$", found)
    if unknown:
        tensor = next((n for n, m in doc.items() if isinstance(m, dict) and m.get("dtype") == unknown[1]), "?")
        raise InputError(f"{where}: tensor {show(tensor, 200)} has dtype {show(unknown[1])}, which safetensors does not "
                         f"know; expected {unknown[2]}")
    expected = next(text for key, text in _EXPECTED if key in found)
    if "invalid shape, data type, or offset" in found and (misfit := _misfit(doc)):
        raise InputError(f"{where}: not a valid safetensors file ({misfit}); expected {expected}")
    raise InputError(f"{where}: not a valid safetensors file ({found}); expected {expected}")


def _tensor_infos(doc: dict[str, Any], file: Path, where: Path) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for name, meta in doc.items():
        if name == _METADATA:
            continue
        if set(meta) != _TENSOR_KEYS:
            raise InputError(f"{where}: tensor {show(name, 200)} has keys {show(sorted(meta), 200)}; expected exactly "
                             "dtype, shape and data_offsets")
        tensors[name] = TensorInfo(name, meta["dtype"], tuple(meta["shape"]), file)
    return tensors


def read_header(path: Path, where: Path | None = None) -> dict[str, TensorInfo]:
    """Return the tensors listed in one safetensors file, the whole header validated; ``where`` is the name
    messages and ``TensorInfo.file`` use (the file as the checkpoint folder names it), ``path`` by default."""
    where = path if where is None else where
    header, data_size = _header_bytes(path, where)
    doc = _parse_header(header, where)
    _check_not_truncated(doc, data_size, where)
    _library_check(path, doc, where)
    return _tensor_infos(doc, where, where)


def _shard(folder: Path, index: Path, name: Any) -> Path:
    """The file a weight_map entry names, checked to be a relative name that stays inside ``folder``."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise InputError(f"{index}: weight_map names shard {show(name, 200)}; expected a file name inside {folder}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise InputError(f"{index}: weight_map names shard {show(name, 200)}, which is outside the checkpoint folder; "
                         f"expected a file name inside {folder}")
    return folder / name


def _read_shard(folder: Path, shard: Path) -> dict[str, TensorInfo]:
    """``read_header`` of a shard: a regular file, its links leading inside ``folder``."""
    target, _ = regular_file(folder, shard, limit=1 << 62)
    return read_header(target, shard)


def _sharded_tensors(folder: Path, index: Path) -> dict[str, TensorInfo]:
    weight_map = read_json(folder, index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise InputError(f"{index}: expected a JSON object with a 'weight_map' (tensor name -> shard file name)")
    shard_of = {name: _shard(folder, index, file) for name, file in weight_map.items()}
    headers: dict[Path, dict[str, TensorInfo]] = {}
    for shard in sorted(set(shard_of.values())):
        if not (shard.is_file() or shard.is_symlink()):
            raise InputError(f"{index}: names shard {show(str(shard.relative_to(folder)), 200)}, which is missing "
                             f"from {folder}")
        headers[shard] = _read_shard(folder, shard)
    missing = sorted(name for name, shard in shard_of.items() if name not in headers[shard])
    if missing:
        raise InputError(f"{index}: tensor {show(missing[0], 200)} is listed but not in its shard ({len(missing)} missing)")
    return _merged(headers, index)


def _merged(headers: dict[Path, dict[str, TensorInfo]], where: Path) -> dict[str, TensorInfo]:
    """The tensors of all shards; InputError when two shards store the same name (which one would load?)."""
    tensors: dict[str, TensorInfo] = {}
    for shard, infos in headers.items():
        for name, info in infos.items():
            if name in tensors:
                raise InputError(f"{where}: tensor {show(name, 200)} is stored in both {tensors[name].file.name} and "
                                 f"{shard.name}; expected each tensor in one shard")
            tensors[name] = info
    return tensors


def read_checkpoint_tensors(folder: Path | str) -> dict[str, TensorInfo]:
    """List every tensor of a single-file or sharded (model.safetensors.index.json) checkpoint."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file() or index.is_symlink():
        return _sharded_tensors(folder, index)
    if single.is_file() or single.is_symlink():
        return _read_shard(folder, single)
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        return _merged({shard: _read_shard(folder, shard) for shard in shards}, folder)
    raise InputError(f"{folder}: no weights found (expected model.safetensors or model.safetensors.index.json)")
