"""og's model builder as a library: its module, its extra-option keys and spellings, its output.

og's builder is a CLI first (``onnxruntime_genai.models.builder``); this file holds everything that
reads its source, translates option spellings or captures its prints, so the rest of the package
calls it like a library. Nothing here knows about DeepStack.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import logging
import re
import sys
import textwrap
from collections.abc import Iterator
from functools import lru_cache
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

QWEN3_VL_ARCHITECTURE = "Qwen3VLForConditionalGeneration"
OG_BUILDER_MODULE = "onnxruntime_genai.models.builder"
# og's help text calls these "deprecated aliases that still work", but og 0.18 reads only the
# unprefixed names: an int4_* key would be silently ignored, so we translate it.
# og builder keys whose default we change: prefill computes the lm_head for the last position only
# (og 0.18's runtime reads the [B, 1, V] logits); prune_lm_head=false gives logits for every position.
OG_OPTION_DEFAULTS = {"prune_lm_head": "true"}
OG_INT4_ALIASES = ("accuracy_level", "algo_config", "block_size", "is_symmetric", "nodes_to_exclude", "op_types_to_quantize")


def og_builder() -> ModuleType:
    """og's builder module, imported the way og's own CLI imports it.

    ``onnxruntime_genai.models`` puts its folder on sys.path and builder.py imports its siblings
    as top-level ``builders``/``builder_config``; subclass the classes from *that* import.
    """
    return _import_og(OG_BUILDER_MODULE)


def _import_og(name: str) -> ModuleType:
    """Import an og module without leaving a trace in the process.

    The first import changes the process (og's folder on sys.path, ``ORT_LIB_PATH``, the root logger
    through onnxruntime's quantizer, warning filters: see process_state.py), so it runs inside
    ``preserved_process_state``: validating options leaves no trace either. That context also puts back
    the folders an earlier call took off sys.path, which og's top-level imports of its siblings need
    (``onnxruntime_genai.models`` adds its folder only when it is first imported).
    """
    if name not in sys.modules:
        from ..process_state import preserved_process_state

        with preserved_process_state():
            importlib.import_module(name)
    return sys.modules[name]


@lru_cache(maxsize=1)
def og_extra_option_keys() -> tuple[str, ...]:
    """Extra option keys the installed og builder documents, plus the int4_* aliases we translate.

    Read from the ``--extra_options`` help text in og's builder.py (og has no list in code):
    each option is a line ``<key> = <description>`` at the outermost indentation of that text.
    """
    tree = ast.parse(inspect.getsource(og_builder()))
    help_text = None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "add_argument"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "--extra_options"
        ):
            for kw in node.keywords:
                if kw.arg == "help":
                    help_text = _string_in(kw.value)
    if not help_text:
        raise RuntimeError("og builder: could not find the --extra_options help text in onnxruntime_genai/models/builder.py")
    lines = textwrap.dedent(help_text).splitlines()
    entries = [(len(line) - len(line.lstrip()), m.group(1)) for line in lines if (m := re.match(r"^\s*([a-z][a-z0-9_]*) = ", line))]
    if not entries:
        raise RuntimeError("og builder: no 'key = description' lines in the --extra_options help text")
    key_indent = min(indent for indent, _ in entries)
    keys = {key for indent, key in entries if indent == key_indent}
    keys |= {f"int4_{key}" for key in OG_INT4_ALIASES if key in keys}
    return tuple(sorted(keys))


def _string_in(node: ast.AST) -> str | None:
    """The string literal in ``"..."`` or ``textwrap.dedent("...")``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Call) and node.args:
        return _string_in(node.args[0])
    return None


def translate_int4_aliases(extra_options: dict[str, Any]) -> dict[str, Any]:
    """Map ``int4_<key>`` to og 0.18's ``<key>``; a clash between both spellings is an error."""
    out = dict(extra_options)
    for key in OG_INT4_ALIASES:
        alias = f"int4_{key}"
        if alias not in out:
            continue
        if key in out and str(out[key]) != str(out[alias]):
            raise ValueError(f"extra option {alias}={out[alias]} conflicts with {key}={out[key]}; give one of them")
        out[key] = out.pop(alias)
        log.debug("extra option %s passed to the og builder as %s", alias, key)
    return out


@contextlib.contextmanager
def og_output_to_debug_log() -> Iterator[None]:
    """og prints progress (and tqdm bars on stderr); keep it out of our output unless debugging."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        for stream, text in (("stdout", out.getvalue()), ("stderr", err.getvalue())):
            for line in text.replace("\r", "\n").splitlines():
                if line.strip():
                    log.debug("og builder %s: %s", stream, line)


def given_options_text(extra_options: dict[str, Any]) -> str:
    """The options as the user gave them: our defaults for og's keys (options.OG_OPTION_DEFAULTS) left out."""
    given = {k: v for k, v in extra_options.items() if OG_OPTION_DEFAULTS.get(k) != v}
    return " ".join(og_option_strings(given)) or "none"


def og_option_strings(extra_options: dict[str, Any]) -> list[str]:
    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    return [f"{key}={text(value)}" for key, value in extra_options.items()]


IO_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def og_io_dtype(precision: str, execution_provider: str, extra_options: dict[str, Any]) -> str:
    """The dtype og's builder gives inputs_embeds, logits and the KV cache ("float32" / "float16" /
    "bfloat16"), from og's own rule (e.g. int4 on CPU keeps float32 io, int4 on CUDA float16)."""
    quant_config = _import_og("onnxruntime_genai.models.quantization.quant_config")
    return IO_DTYPE_NAMES[quant_config.default_io_dtype(precision, execution_provider, extra_options)]


@contextlib.contextmanager
def stamp_with_package_commit(model: Any) -> Iterator[None]:
    """og stamps model.onnx's producer_version with ``git rev-parse HEAD`` run five folders above its own file,
    which inside a virtualenv is the user's checkout: the same build would give different bytes per checkout.
    While saving, og's commit lookup answers with the installed wheel's own commit instead."""
    owner = next(cls for cls in type(model).__mro__ if "get_genai_commit" in vars(cls))
    original = vars(owner)["get_genai_commit"]

    def package_commit(cls: type) -> str | None:
        import onnxruntime_genai

        return getattr(onnxruntime_genai, "__commit__", None) or None

    owner.get_genai_commit = classmethod(package_commit)
    try:
        yield
    finally:
        owner.get_genai_commit = original

