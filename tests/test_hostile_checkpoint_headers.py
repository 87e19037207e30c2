"""Hostile safetensors headers and JSON files: each fails through the CLI within seconds with exit 2, one error
line naming the file and what was expected, and nothing written; never a traceback, a MemoryError or a build
of wrong weights.

The header rows edit the small checkpoint's model.safetensors (every tensor is checked, also ones the build
never reads); the JSON rows its config.json, tokenizer files and the other configs.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_bad_input import OUT, assert_no_leftovers, run_cli, the_error_line

from builder_qwen3vl.checkpoint.safetensors_index import read_header
from builder_qwen3vl.ground.errors import InputError

WEIGHTS = "model.safetensors"
OFFSET_RULE = "expected the tensors' data_offsets, in offset order, to cover the data section back to back from byte 0"


def _load(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _save(path: Path, header: dict[str, Any] | bytes, data: bytes, header_len: int | None = None) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + data)


def _tensors(header: dict[str, Any]) -> list[str]:
    """Tensor names in data order."""
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _overlap(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    """The last tensor's bytes dropped and its offsets pointed at another tensor of its shape: two tensors share
    bytes, the file is otherwise complete (no hole, no trailing bytes)."""
    last = _tensors(header)[-1]
    twin = next(k for k in _tensors(header) if k != last and header[k]["shape"] == header[last]["shape"]
                and header[k]["dtype"] == header[last]["dtype"])
    begin = header[last]["data_offsets"][0]
    header[last]["data_offsets"] = list(header[twin]["data_offsets"])
    return header, data[:begin]


def _extra(dtype: str, gap: int = 0, shape: list[int] | None = None, size: int = 8) -> Callable:
    """An unused extra tensor appended after the data (``gap`` bytes after it)."""
    def edit(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        header["unused.extra"] = {"dtype": dtype, "shape": shape or [2], "data_offsets": [len(data) + gap, len(data) + gap + size]}
        return header, data + b"\0" * (gap + size)
    return edit


def _set(key: str, value: Any, tensor: str = "model.language_model.norm.weight") -> Callable:
    def edit(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        header[tensor][key] = value
        return header, data
    return edit


def _swap_offsets(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    name = _tensors(header)[0]
    header[name]["data_offsets"] = header[name]["data_offsets"][::-1]
    return header, data


def _raw(text: bytes, header_len: int | None = None) -> Callable:
    def write(path: Path) -> None:
        _save(path, text, b"", header_len)
    return write


def _edited(edit: Callable) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        header, data = edit(*_load(path))
        _save(path, header, data)
    return write


NORM = "model.language_model.norm.weight"
HEADER_ROWS: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("overlap", _edited(_overlap), ("not a valid safetensors file (invalid offset for tensor", OFFSET_RULE)),
    ("hole", _edited(_extra("F32", gap=4)), ("invalid offset for tensor 'unused.extra'", OFFSET_RULE)),
    ("unknown_dtype_unused", _edited(_extra("Q4")),
     ("tensor 'unused.extra' has dtype 'Q4', which safetensors does not know; expected one of 'BOOL',", "'F8_E4M3'", "'U64'")),
    ("size_mismatch", _edited(_set("shape", [63])),
     (f"tensor '{NORM}' is F32 of shape [63] (63 elements) but its data_offsets", "span 256 bytes",
      "expected each tensor's data_offsets to span its shape x dtype size in bytes")),
    ("offsets_reversed", _edited(_swap_offsets), ("invalid offset for tensor", OFFSET_RULE)),
    ("beyond_file", _edited(_set("data_offsets", [0, 1 << 40])), (f"truncated safetensors file: tensor '{NORM}' ends at byte 1099511627776",)),
    ("bytes_after_last", _edited(lambda h, d: (h, d + b"\0" * 16)),
     ("not a valid safetensors file (incomplete metadata, file not fully covered); expected the last tensor to end "
      "where the file ends",)),
    ("not_an_object", _raw(b"[1, 2, 3]"), ("corrupt safetensors header (a JSON list); expected an object",)),
    ("not_json", _raw(b"{'a': 1}"), ("corrupt safetensors header (Expecting property name",)),
    ("not_utf8", _raw(b'{"\xff": 1}'), ("corrupt safetensors header ('utf-8' codec can't decode",)),
    ("nested_deeply", _raw(b"[" * 200_000 + b"]" * 200_000), ("corrupt safetensors header (nested too deeply)",)),
    ("shape_not_int", _edited(_set("shape", ["64"])), ('invalid type: string "64", expected usize',)),
    ("shape_negative", _edited(_set("shape", [-64])), ("invalid value: integer '-64', expected usize",)),
    ("offsets_three", _edited(_set("data_offsets", [0, 256, 512])), ("invalid length 3, expected 2 elements",)),
    ("tensor_not_object", _edited(lambda h, d: ({**h, NORM: 5}, d)), ("invalid type: integer '5', expected struct TensorInfo",)),
    ("extra_key", _edited(_set("offset_hint", 0)),
     (f"tensor '{NORM}' has keys ['data_offsets', 'dtype', 'offset_hint', 'shape']; expected exactly dtype, shape and data_offsets",)),
    ("metadata_not_strings", _edited(lambda h, d: ({**h, "__metadata__": {"format": 1}}, d)),
     ("invalid type: integer '1', expected a string", "__metadata__ a string -> string map")),
    ("header_length_absurd", _raw(b"{}", header_len=1 << 60), ("truncated or corrupt safetensors file (header length 1152921504606846976)",)),
    ("header_length_past_end", _raw(b"{}", header_len=4096), ("truncated or corrupt safetensors file (header length 4096)",)),
    ("no_header", lambda p: p.write_bytes(b"\1\0"), ("truncated safetensors file (no header)",)),
    ("shape_overflow", _edited(_set("shape", [1 << 62, 1 << 62])), ("overflow computing buffer size",)),
]


def _cli_refuses(capsys, ckpt: Path, tmp_path: Path, fragments: tuple[str, ...], seconds: float = 10.0) -> str:
    start = time.perf_counter()
    code, text = run_cli(capsys, "-i", ckpt, "-o", tmp_path / OUT, "-p", "fp32")
    elapsed = time.perf_counter() - start
    line = the_error_line(text)
    print(f"exit {code} in {elapsed:.1f} s: {line}")
    assert code == 2
    for fragment in fragments:
        assert fragment in line, line
    assert elapsed < seconds
    assert_no_leftovers(tmp_path)
    return line


@pytest.mark.parametrize("write,fragments", [r[1:] for r in HEADER_ROWS], ids=[r[0] for r in HEADER_ROWS])
def test_hostile_header(small_ckpt: Path, tmp_path: Path, capsys, write: Callable, fragments: tuple[str, ...]) -> None:
    write(small_ckpt / WEIGHTS)
    line = _cli_refuses(capsys, small_ckpt, tmp_path, fragments)
    assert f"{small_ckpt / WEIGHTS}: " in line


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    entry = '{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
    _save(tmp_path / "x.safetensors", f'{{"a": {entry}, "a": {entry}}}'.encode(), b"\0" * 8)
    with pytest.raises(InputError, match=r"x.safetensors: corrupt safetensors header \('a' appears twice in one object\)"):
        read_header(tmp_path / "x.safetensors")


def test_every_dtype_the_library_knows_is_accepted(tmp_path: Path) -> None:
    bits = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
            "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64}
    header, offset = {}, 0
    for dtype, width in bits.items():
        header[dtype.lower()] = {"dtype": dtype, "shape": [2, 4], "data_offsets": [offset, offset + width]}
        offset += width
    _save(tmp_path / "x.safetensors", header, b"\0" * offset)
    assert {info.dtype for info in read_header(tmp_path / "x.safetensors").values()} == set(bits)


# ---------------------------------------------------------------- config.json and the other JSON files


def _text(**changes: Any) -> Callable[[Path], None]:
    def edit(ckpt: Path) -> None:
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["text_config"].update(changes)
        (ckpt / "config.json").write_text(json.dumps(cfg))
    return edit


def _file(name: str, content: str | bytes) -> Callable[[Path], None]:
    def write(ckpt: Path) -> None:
        path = ckpt / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return write


CONFIG = "config.json: text_config"
JSON_ROWS: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("layers_1e9", _text(num_hidden_layers=10**9), (f"{CONFIG} num_hidden_layers is 1000000000, expected 1..2048",)),
    ("layers_more_than_weights", _text(num_hidden_layers=2000),
     ("weights lack tensor 'model.language_model.layers.4.self_attn.q_proj.weight' (expected shape [128, 64])",)),
    ("layers_string", _text(num_hidden_layers="4"), (f"{CONFIG} num_hidden_layers is '4', expected an integer",)),
    ("layers_float", _text(num_hidden_layers=4.0), (f"{CONFIG} num_hidden_layers is 4.0, expected an integer",)),
    ("layers_bool", _text(num_hidden_layers=True), (f"{CONFIG} num_hidden_layers is true, expected an integer",)),
    ("layers_null", _text(num_hidden_layers=None), (f"{CONFIG} num_hidden_layers is null, expected an integer",)),
    ("layers_list", _text(num_hidden_layers=[4]), (f"{CONFIG} num_hidden_layers is [4], expected an integer",)),
    ("hidden_huge", _text(hidden_size=1 << 40), (f"{CONFIG} hidden_size is 1099511627776, expected 1..1048576",)),
    ("vocab_huge", _text(vocab_size=10**30), (f"{CONFIG} vocab_size is 1000000000000000000000000000000, expected 1..16777216",)),
    ("positions_huge", _text(max_position_embeddings=1 << 40), (f"{CONFIG} max_position_embeddings is 1099511627776, expected 1..4194304",)),
    ("heads_zero", _text(num_attention_heads=0), (f"{CONFIG} num_attention_heads is 0, expected 1..1048576",)),
    ("rope_theta_nan", _text(rope_theta=float("nan")), (f"{CONFIG} rope_theta is nan, expected a finite number > 0",)),
    ("eps_string", _text(rms_norm_eps="1e-6"), (f"{CONFIG} rms_norm_eps is '1e-6', expected a finite number >= 0",)),
    ("text_config_list", _file("config.json", '{"architectures": ["Qwen3VLForConditionalGeneration"], '
                                              '"text_config": [], "vision_config": {}}'),
     ("config.json: text_config is [], expected an object",)),
    ("architectures_string", _file("config.json", '{"architectures": "Qwen3VLForConditionalGeneration"}'),
     ("config.json: architectures is 'Qwen3VLForConditionalGeneration', expected a list of class names",)),
    ("config_nested_deeply", _file("config.json", "[" * 100_000 + "]" * 100_000), ("config.json: not valid JSON (nested too deeply)",)),
    ("config_not_utf8", _file("config.json", b'{"model_type": "\xff"}'), ("config.json: not UTF-8 text (byte 16); expected a UTF-8 file",)),
    ("config_huge_number", _file("config.json", '{"a": ' + "9" * 5000 + "}"),
     ("config.json: not valid JSON (Exceeds the limit (4300 digits) for integer string conversion",)),
    ("config_wrong_type", _file("config.json", '"qwen3_vl"'), ("config.json: expected a JSON object, found str",)),
    ("config_enormous", _file("config.json", b" " * (17 << 20) + b"{}"), ("config.json: 17825794 bytes; expected at most 16 MiB for this file",)),
    ("generation_eos_string", _file("generation_config.json", '{"eos_token_id": "151645"}'),
     ("generation_config.json: eos_token_id is '151645', expected a token id or a non-empty list of token ids (0..2147483647)",)),
    ("preprocessor_mean_short", _file("preprocessor_config.json", '{"image_mean": [0.5]}'),
     ("preprocessor_config.json: image_mean is [0.5], expected 3 numbers (one per RGB channel)",)),
    ("tokenizer_not_a_tokenizer", _file("tokenizer.json", '{"version": "1.0"}'),
     ("tokenizer.json: model is null, expected an object with the tokenizer model",)),
    ("tokenizer_vocab_list", _file("tokenizer.json", '{"model": {"type": "BPE", "vocab": [1, 2]}}'),
     ("tokenizer.json: model.vocab is [1, 2], expected an object mapping each token to its id",)),
    ("tokenizer_added_tokens", _file("tokenizer.json", '{"model": {"type": "BPE"}, "added_tokens": {"id": 1}}'),
     ("tokenizer.json: added_tokens is {'id': 1}, expected a list of {id, content} objects",)),
    # JSON of the right shape that the tokenizers library (what transformers and og load it with) refuses
    ("tokenizer_bpe_without_vocab", _file("tokenizer.json", '{"version": "1.0", "model": {"type": "BPE"}}'),
     ("tokenizer.json: not a tokenizer the tokenizers library can load (Missing vocab/merges",)),
    ("tokenizer_unknown_model", _file("tokenizer.json", '{"version": "1.0", "model": {"type": "Nope", "vocab": {}}}'),
     ("tokenizer.json: not a tokenizer the tokenizers library can load (",)),
    ("tokenizer_bad_merges", _file("tokenizer.json", '{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, '
                                                     '"merges": [1, 2]}}'),
     ("tokenizer.json: not a tokenizer the tokenizers library can load (",)),
    ("tokenizer_unknown_pre_tokenizer", _file("tokenizer.json", '{"version": "1.0", "pre_tokenizer": {"type": "Nope"}, '
                                                                '"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}'),
     ("tokenizer.json: not a tokenizer the tokenizers library can load (",)),
    ("tokenizer_config_eos", _file("tokenizer_config.json", '{"eos_token": 151645}'),
     ("tokenizer_config.json: eos_token is 151645, expected a string, an AddedToken object or null",)),
    ("tokenizer_config_template", _file("tokenizer_config.json", '{"chat_template": 7}'),
     ("tokenizer_config.json: chat_template is 7, expected a string or a list of {name, template} objects",)),
    ("tokenizer_config_nan", _file("tokenizer_config.json", '{"model_max_length": NaN}'),
     ("tokenizer_config.json: model_max_length is nan, expected a number",)),
    ("index_weight_map_list", _file("model.safetensors.index.json", '{"weight_map": []}'),
     ("model.safetensors.index.json: expected a JSON object with a 'weight_map' (tensor name -> shard file name)",)),
]


@pytest.mark.parametrize("write,fragments", [r[1:] for r in JSON_ROWS], ids=[r[0] for r in JSON_ROWS])
def test_hostile_json(small_ckpt: Path, tmp_path: Path, capsys, write: Callable, fragments: tuple[str, ...]) -> None:
    write(small_ckpt)
    _cli_refuses(capsys, small_ckpt, tmp_path, fragments)
