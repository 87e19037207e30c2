"""The checkpoint's JSON files, read as untrusted data: bounded in size, any malformation one InputError line
naming the file, and the tokenizer files checked for the structure the runtime's tokenizer reads."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..ground.errors import InputError
from .paths import MiB, read_text

# Config files are a few KiB (a sharded index a few MiB); the cap keeps a hostile file from taking gigabytes
# as Python objects. tokenizer.json (~11 MiB for Qwen) and vocab.json get paths.MAX_TEXT_BYTES.
MAX_CONFIG_BYTES = 16 * MiB


def show(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, for one-line messages about arbitrary JSON values (JSON's
    own names for true, false and null)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # deeply nested, or an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_json(text: str, where: Path | str) -> Any:
    """``json.loads(text)``; InputError naming ``where`` for anything that is not JSON Python can hold."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise InputError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise InputError(f"{where}: not valid JSON ({str(e).split(';')[0]})") from None


def read_json(folder: Path, path: Path, limit: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """The JSON object in checkpoint file ``path`` (inside ``folder``, at most ``limit`` bytes)."""
    data = parse_json(read_text(folder, path, limit), path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def optional_json(folder: Path, path: Path) -> dict[str, Any] | None:
    """``read_json`` when the file exists (a link too: it must then lead inside the folder), else None."""
    return read_json(folder, path) if path.is_file() or path.is_symlink() else None


def _expect(ok: bool, where: Path, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise InputError(f"{where}: {key} is {show(value)}, expected {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_token(value: Any) -> bool:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken object."""
    return isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("content"), str))


def check_tokenizer_json(doc: dict[str, Any], where: Path) -> None:
    """A tokenizers ``tokenizer.json``: a ``model`` object with a ``type``, its ``vocab`` (when given) a
    token -> id map (a [token, score] list for Unigram), ``added_tokens`` a list of {id, content} objects."""
    model = doc.get("model")
    _expect(isinstance(model, dict), where, "model", model, "an object with the tokenizer model (type, vocab, ...)")
    _expect(isinstance(model.get("type"), str), where, "model.type", model.get("type"), 'a string such as "BPE"')
    vocab = model.get("vocab")
    if vocab is not None:
        if model["type"] == "Unigram":
            _expect(isinstance(vocab, list) and all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                                                    for v in vocab),
                    where, "model.vocab", vocab, "a list of [token, score] pairs")
        else:
            _expect(isinstance(vocab, dict) and all(_is_int(v) and v >= 0 for v in vocab.values()),
                    where, "model.vocab", vocab, "an object mapping each token to its id")
    merges = model.get("merges")
    _expect(merges is None or isinstance(merges, list), where, "model.merges", merges, "a list")
    added = doc.get("added_tokens", [])
    _expect(isinstance(added, list), where, "added_tokens", added, "a list of {id, content} objects")
    for i, token in enumerate(added):
        _expect(isinstance(token, dict) and _is_int(token.get("id")) and token["id"] >= 0
                and isinstance(token.get("content"), str), where, f"added_tokens[{i}]", token,
                "an object with an integer id and a string content")
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation", "padding"):
        _expect(doc.get(key) is None or isinstance(doc[key], dict), where, key, doc.get(key), "an object or null")
    _check_with_tokenizers(doc, where)


def _check_with_tokenizers(doc: dict[str, Any], where: Path) -> None:
    """The rest is the tokenizers library's to judge (model types, merges, pre-tokenizers, ...): it is what
    transformers and og load the file with, so a file it refuses would build a bundle nothing can run."""
    import json

    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(json.dumps(doc))
    except Exception as e:  # the library raises a bare Exception for every kind of bad file
        reason = " ".join(str(e).split()) or type(e).__name__
        raise InputError(f"{where}: not a tokenizer the tokenizers library can load ({reason})") from None


# tokenizer_config.json keys the runtime's tokenizer or the build reads: key -> (type test, what is expected)
_TOKENIZER_CONFIG_KEYS: dict[str, tuple[Any, str]] = {
    **{key: (lambda v: v is None or _is_token(v), "a string, an AddedToken object or null")
       for key in ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token")},
    **{key: (lambda v: v is None or isinstance(v, bool), "true, false or null")
       for key in ("add_bos_token", "add_eos_token", "add_prefix_space", "clean_up_tokenization_spaces",
                   "split_special_tokens", "legacy")},
    "tokenizer_class": (lambda v: v is None or isinstance(v, str), "a string"),
    "chat_template": (lambda v: v is None or isinstance(v, str) or (isinstance(v, list) and all(
        isinstance(t, dict) and isinstance(t.get("template"), str) for t in v)),
        "a string or a list of {name, template} objects"),
    "model_max_length": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and not (isinstance(v, float) and math.isnan(v))), "a number"),
    "additional_special_tokens": (lambda v: v is None or (isinstance(v, list) and all(_is_token(t) for t in v)),
                                  "a list of tokens"),
    "added_tokens_decoder": (lambda v: v is None or (isinstance(v, dict) and all(
        k.isdigit() and isinstance(t, dict) and isinstance(t.get("content"), str) for k, t in v.items())),
        'an object mapping token ids ("151643") to {content, ...} objects'),
}


def check_tokenizer_config(doc: dict[str, Any], where: Path) -> None:
    """The keys of tokenizer_config.json the tokenizers read, when present, of the types they expect."""
    for key, (ok, expected) in _TOKENIZER_CONFIG_KEYS.items():
        if key in doc:
            _expect(ok(doc[key]), where, key, doc[key], expected)
