"""The bundle path rule: every file read from a bundle lies inside the bundle folder.

genai_config.json names the three models and the processor config, an ONNX model names its external data
files (``location``), and the run-time helpers read processor_config.json and video_preprocessor_config.json.
A bundle is copied, shared and downloaded as one folder, so a name that is absolute, climbs out with ``..`` or
is a symlink to elsewhere would make it read files it does not hold. ``bundle_file`` applies the rule
(``folder_rule.py``, the checkpoint's too: links followed, then inside the folder, a hub cache snapshot's own
blobs included) to each such path; ``verify`` and the run-time helpers call it.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .contract import GENAI_CONFIG_FILENAME, TOKENIZER_FILES
from .folder_rule import lies_inside

# genai_config.json's file names: (section, key) -> what a message calls it
GENAI_FILE_KEYS = (("decoder", "filename"), ("embedding", "filename"), ("vision", "filename"), ("vision", "config_filename"))


MAX_JSON_BYTES = 16 << 20  # a bundle's config files (genai_config, processor and video configs)
MAX_TOKENIZER_BYTES = 64 << 20  # tokenizer.json (the released one is about 11 MiB)


class BundlePathError(ValueError):
    """A bundle names or holds a file outside its folder; the message is one line naming the file and the key."""


def bundle_file(bundle: str | Path, name: Any, named_by: str | None = None, *, base: str | Path | None = None) -> Path:
    """``base / name`` if it resolves, symlinks followed, to a path inside ``bundle``; else BundlePathError.

    ``base`` is the folder ``name`` is relative to: ``bundle`` (the default), or the folder of the model whose
    external data it names. ``named_by`` says where the name comes from (``"genai_config.json
    model.decoder.filename"``, ``"model.onnx external data location"``); None for the files a bundle always has
    under fixed names. The file need not exist: a missing file is the caller's to report.
    """
    where = named_by or "file name"
    if not isinstance(name, str) or not name or "\0" in name:
        raise BundlePathError(f"{where} is {name!r}: expected the name of a file inside the bundle folder")
    if os.path.isabs(name):
        raise BundlePathError(f"{where} is {name!r}: an absolute path; a bundle names its files relative to its folder")
    base = Path(bundle if base is None else base)
    root = Path(os.path.realpath(bundle))
    resolved = Path(os.path.realpath(base / name))
    if resolved == root or not lies_inside(root, resolved):
        how = f"{named_by} is {name!r}, which" if named_by else f"{name} is a symlink that"
        raise BundlePathError(f"{how} resolves to {resolved}, outside the bundle folder {root}; "
                              "a bundle reads only files inside itself")
    return base / name


def check_bundle_paths(bundle: str | Path) -> None:
    """The rule on what og reads when it loads ``bundle``: genai_config.json, the files it names, the tokenizer
    files and each model's external data. Cheap (external data is never read). What is missing or unreadable is
    left to og, which names it; only a path leaving the folder raises BundlePathError."""
    config = bundle_file(bundle, GENAI_CONFIG_FILENAME)
    for name in TOKENIZER_FILES:
        bundle_file(bundle, name)
    for named_by, name in genai_file_names(config):
        path = bundle_file(bundle, name, named_by)
        if path.suffix == ".onnx" and path.is_file():
            for location in sorted(external_data_locations(path)):
                bundle_file(bundle, location, f"{path.name} external data location", base=path.parent)


def genai_file_names(config: Path) -> Iterator[tuple[str, Any]]:
    """("genai_config.json model.<section>.<key>", the name) for each file genai_config.json names; nothing when
    the file is not the JSON object og expects (og then reports it)."""
    try:
        model = read_bundle_json(config).get("model")
    except ValueError:
        return
    for section, key in GENAI_FILE_KEYS:
        part = model.get(section) if isinstance(model, dict) else None
        if isinstance(part, dict) and part.get(key) is not None:
            yield f"{GENAI_CONFIG_FILENAME} model.{section}.{key}", part[key]


# ONNX messages that can hold tensors, by protobuf field number: message kind -> {field: kind of the field}.
_ONNX_FIELDS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "function": {7: "node", 11: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},  # external_data: StringStringEntryProto key = 1, value = 2
}


def external_data_locations(path: Path) -> set[str]:
    """The external data file names (``location``) an ONNX model refers to, read from the protobuf wire format
    without parsing tensor bytes, so a multi-gigabyte model costs milliseconds. An unreadable file gives what
    was found before the damage (onnxruntime reports the file itself)."""
    found: set[str] = set()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return found
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            stack = [("model", 0, len(data))]
            try:
                while stack:
                    kind, start, end = stack.pop()
                    if kind == "entry":
                        entry = {field: bytes(data[s:e]) for field, s, e in _fields(data, start, end)}
                        if entry.get(1) == b"location" and 2 in entry:
                            found.add(entry[2].decode("utf-8", "replace"))
                        continue
                    children = _ONNX_FIELDS[kind]
                    stack.extend((children[field], s, e) for field, s, e in _fields(data, start, end) if field in children)
            except (IndexError, ValueError):
                pass
    return found


def _fields(data: Any, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in ``data[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise ValueError("field runs past its message")
            yield key >> 3, pos, pos + size
            pos += size
        else:
            raise ValueError(f"wire type {wire}")


def _varint(data: Any, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def read_bundle_json(path: Path, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A bundle's JSON file as an object: a regular file of at most ``limit`` bytes (ValueError: one line naming it)."""
    try:
        if not path.is_file():
            raise ValueError(f"{path}: not a regular file")
        with path.open("rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"{path}: more than {limit >> 20} MiB, expected at most that for this file")
        doc = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: not readable JSON (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(doc).__name__}")
    return doc
