"""Property tests: whatever a checkpoint folder holds, reading it either succeeds or raises InputError with a
one-line message; never another exception, a hang or a MemoryError. Derandomized and bounded, so every run
tries the same cases in well under a minute.

- safetensors headers: raw bytes, arbitrary JSON, and tensor tables with perturbed dtypes, shapes and offsets
  (a header that passes must describe a file whose tensors fill the data section exactly);
- config.json: ``Qwen3VLConfig.from_dict`` and ``read_checkpoint`` on the small checkpoint with keys deleted or
  set to arbitrary JSON values, and the other JSON files replaced by arbitrary JSON;
- the CLI on such checkpoints (the exports stubbed): exit 0 or 2, nothing else.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder_qwen3vl.checkpoint.config import Qwen3VLConfig
from builder_qwen3vl.checkpoint.reader import expected_count, expected_tensors, read_checkpoint
from builder_qwen3vl.checkpoint.safetensors_index import read_header
from builder_qwen3vl.ground.errors import InputError
from builder_qwen3vl.testing.checkpoints import tiny_config
from builder_qwen3vl.testing.moe_checkpoints import tiny_moe_config

_FUZZ = settings(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def fuzz(examples: int) -> settings:
    """Deterministic (derandomized, no example database) and bounded: ``examples`` cases, no deadline."""
    return settings(_FUZZ, max_examples=examples)

BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
        "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64}

_scalars = st.one_of(
    st.none(), st.booleans(), st.floats(), st.text(max_size=8),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.sampled_from([0, 1, 2, 3, 4, 8, 16, 64, 512, -1, 10**9, 1 << 31, 1 << 63, 10**30, 64.0, "64", ""]),
)
JSON = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                    max_leaves=12)


def _reads_or_input_error(read: Any, *args: Any) -> Any:
    """``read(*args)``, or None when it raises InputError, whose message must be one line."""
    try:
        return read(*args)
    except InputError as e:
        assert "\n" not in str(e) and str(e), repr(str(e))
        return None


def _file(path: Path, header: bytes, data: bytes, header_len: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if header_len is None else header_len) + header + data)
    return path


# ---------------------------------------------------------------- safetensors headers


@fuzz(150)
@given(content=st.binary(max_size=64), header_len=st.one_of(st.none(), st.integers(0, (1 << 64) - 1)))
def test_header_raw_bytes(tmp_path: Path, content: bytes, header_len: int | None) -> None:
    _reads_or_input_error(read_header, _file(tmp_path / "x.safetensors", content, b"", header_len))


@fuzz(150)
@given(doc=JSON, data_len=st.integers(0, 64), depth=st.integers(0, 3000))
def test_header_any_json(tmp_path: Path, doc: Any, data_len: int, depth: int) -> None:
    text = "[" * depth + json.dumps(doc) + "]" * depth
    _reads_or_input_error(read_header, _file(tmp_path / "x.safetensors", text.encode(), b"\0" * data_len))


_dtypes = st.one_of(st.sampled_from(sorted(BITS)), st.sampled_from(["Q4", "f32", "", "F32 "]), st.integers(0, 9))
_shape = st.lists(st.one_of(st.integers(0, 6), st.integers(-3, 1 << 64), st.sampled_from(["2", 2.0, None, True])),
                  max_size=3)
_table = st.lists(st.tuples(st.text(max_size=4), _dtypes, _shape), min_size=0, max_size=5)
_perturb = st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["begin", "end", "swap", "key", "drop", "dup"]),
                              st.integers(-9, 9)), max_size=3)


def _layout(table: list[tuple[str, Any, list[Any]]]) -> tuple[dict[str, Any], int]:
    """A header placing the tensors back to back (where their dtype and shape give a size of at most 4 KiB),
    and its data size."""
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape in table:
        size = 0  # a tensor too large to write here gets no bytes (and fails the size rule)
        if dtype in BITS and all(type(d) is int and 0 <= d < 1 << 20 for d in shape):
            size = math.prod(shape) * BITS[dtype] // 8
            size = size if size <= 4096 else 0
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    return header, offset


def _perturbed(header: dict[str, Any], changes: list[tuple[int, str, int]]) -> bytes:
    names = list(header)
    entries = [json.dumps(name) + ": " + json.dumps(meta) for name, meta in header.items()]
    tensors = [i for i, name in enumerate(names) if name != "__metadata__"]
    for index, how, delta in changes:
        if not tensors:
            break
        i = tensors[index % len(tensors)]
        meta = copy.deepcopy(header[names[i]])
        if how == "begin":
            meta["data_offsets"][0] += delta
        elif how == "end":
            meta["data_offsets"][1] += delta
        elif how == "swap":
            meta["data_offsets"].reverse()
        elif how == "key":
            meta["extra"] = delta
        elif how == "drop":
            meta.pop(["dtype", "shape", "data_offsets"][delta % 3])
        entries[i] = json.dumps(names[i]) + ": " + json.dumps(meta)
        if how == "dup":
            entries.append(entries[i])
    return ("{" + ", ".join(entries) + "}").encode()


@fuzz(300)
@given(table=_table, changes=_perturb, extra_bytes=st.integers(-4, 4),
       metadata=st.sampled_from([None, {}, {"format": "pt"}, {"format": 1}, [], "pt"]))
def test_header_tensor_tables(tmp_path: Path, table: list, changes: list, extra_bytes: int, metadata: Any) -> None:
    header, size = _layout(table)
    if metadata is not None:
        header = {"__metadata__": metadata, **header}
    text = _perturbed(header, changes)
    path = _file(tmp_path / "x.safetensors", text, b"\0" * max(0, size + extra_bytes))
    tensors = _reads_or_input_error(read_header, path)
    if tensors is None:
        return
    # Accepted: then the file is what the format requires (the library's rules, checked here independently).
    doc = json.loads(text)
    doc.pop("__metadata__", None)
    assert set(tensors) == set(doc)
    spans = sorted(tuple(meta["data_offsets"]) for meta in doc.values())
    data_size = path.stat().st_size - 8 - len(text)
    position = 0
    for begin, end in spans:
        assert begin == position and begin <= end
        position = end
    assert position == data_size
    for name, meta in doc.items():
        assert set(meta) == {"dtype", "shape", "data_offsets"}
        assert (meta["data_offsets"][1] - meta["data_offsets"][0]) * 8 == math.prod(meta["shape"]) * BITS[meta["dtype"]]
        assert tensors[name].shape == tuple(meta["shape"]) and tensors[name].dtype == meta["dtype"]


# ---------------------------------------------------------------- config.json

BASE = tiny_config(vocab_size=512)
MOE_BASE = tiny_moe_config(vocab_size=512)
SECTIONS = [(), ("text_config",), ("vision_config",), ("text_config", "rope_scaling")]
EXTRA_KEYS = ["num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step", "mlp_only_layers",
              "rope_parameters", "head_dim", "num_key_value_heads", "eos_token_id", "pad_token_id", "bos_token_id"]
INTERESTING = [["Qwen3VLMoeForConditionalGeneration"], "qwen3_vl_moe", [16, 8, 8], [0, 0, 0], [0], [1, 2], 8, 4, 2,
               1, 0, -1, True, None, float("nan"), float("inf"), 1 << 64, "64", 64.0, [], {}]


def _keys_at(section: tuple[str, ...]) -> list[str]:
    node: Any = BASE
    for key in section:
        node = node[key]
    return sorted(node) + EXTRA_KEYS


_edits = st.lists(
    st.sampled_from(SECTIONS).flatmap(lambda s: st.tuples(
        st.just(s), st.sampled_from(_keys_at(s)), st.one_of(st.just("<delete>"), st.sampled_from(INTERESTING), JSON))),
    min_size=1, max_size=3)


def _mutated(edits: list[tuple[tuple[str, ...], str, Any]], base: dict[str, Any] = BASE) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    for section, key, value in edits:
        node: Any = cfg
        for part in section:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if value == "<delete>":
            node.pop(key, None)
        else:
            node[key] = value
    return cfg


def _parse(cfg: dict[str, Any]) -> Qwen3VLConfig:
    return Qwen3VLConfig.from_dict(cfg, where="config.json")


@fuzz(300)
@given(edits=_edits, base=st.sampled_from([BASE, MOE_BASE]))
def test_config_from_dict(edits: list, base: dict[str, Any]) -> None:
    parsed = _reads_or_input_error(_parse, _mutated(edits, base))
    if parsed is not None:
        text = parsed.text
        assert 1 <= text.num_hidden_layers <= 2048 and 1 <= text.hidden_size <= 1 << 20 and 1 <= text.vocab_size <= 1 << 24
        assert text.hidden_size % text.num_attention_heads == 0 and math.isfinite(text.rope.theta)
        assert expected_count(text, parsed.vision) == len(expected_tensors(text, parsed.vision))


@fuzz(120)
@given(edits=_edits)
def test_read_checkpoint_with_mutated_config(small_ckpt: Path, edits: list) -> None:
    (small_ckpt / "config.json").write_text(json.dumps(_mutated(edits)))
    _reads_or_input_error(read_checkpoint, small_ckpt)


@fuzz(120)
@given(name=st.sampled_from(["tokenizer.json", "tokenizer_config.json", "generation_config.json", "preprocessor_config.json",
                             "video_preprocessor_config.json", "chat_template.json", "model.safetensors.index.json"]),
       doc=JSON, as_object=st.booleans())
def test_read_checkpoint_with_any_json_file(small_ckpt: Path, name: str, doc: Any, as_object: bool) -> None:
    original = (small_ckpt / name).read_bytes() if (small_ckpt / name).exists() else None
    (small_ckpt / name).write_text(json.dumps({"model": doc, "weight_map": doc, "size": doc} if as_object else doc))
    try:
        _reads_or_input_error(read_checkpoint, small_ckpt)
    finally:
        if original is None:
            (small_ckpt / name).unlink()
        else:
            (small_ckpt / name).write_bytes(original)


# ---------------------------------------------------------------- the CLI

_runs = itertools.count()


@pytest.fixture()
def stub_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exports replaced by a one-file bundle: a checkpoint that reads cleanly finishes in a second."""
    import importlib

    build_module = importlib.import_module("builder_qwen3vl.pipeline")
    monkeypatch.setattr(build_module, "write_bundle", lambda ckpt, plan, options, out: (out / "genai_config.json").write_text("{}"))


@fuzz(30)
@given(edits=_edits)
def test_cli_exit_code(small_ckpt: Path, tmp_path: Path, stub_exports: None, capsys, edits: list) -> None:
    from builder_qwen3vl.cli import main

    (small_ckpt / "config.json").write_text(json.dumps(_mutated(edits)))
    code = main(["-i", str(small_ckpt), "-o", str(tmp_path / f"out{next(_runs)}"), "-p", "fp32"])
    text = capsys.readouterr()
    assert code in (0, 2), text.out + text.err
    assert "Traceback" not in text.out + text.err
