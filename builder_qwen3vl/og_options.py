"""og's model builder as the option parser sees it: its module, its extra-option keys and spellings, its io-dtype rule.

og's builder is a CLI first (``onnxruntime_genai.models.builder``); this file reads its source and its
quantization config so that options and the plan can check and resolve og's keys like a library's. The
decoder folder drives og's builder itself (decoder/og_builder.py, decoder/og_adapter.py).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
import sys
import textwrap
from functools import lru_cache
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

OG_BUILDER_MODULE = "onnxruntime_genai.models.builder"
# og's help text calls these "deprecated aliases that still work", but og 0.18 reads only the
# unprefixed names: an int4_* key would be silently ignored, so we translate it.
# og builder keys whose default we change: prefill computes the lm_head for the last position only
# (og 0.18's runtime reads the [B, 1, V] logits); prune_lm_head=false gives logits for every position.
OG_OPTION_DEFAULTS = {"prune_lm_head": "true"}
# og builder keys whose default we change on CPU: onnxruntime's int8-compute MatMulNBits kernel (accuracy_level 4)
# converts and scales its int32 sums once per block, so 128-wide blocks run prefill and decode faster than og's 32
# (2B shape: prefill 256 tokens 86 -> 101 tok/s, decode 25 -> 32 tok/s; docs/benchmarks.md, "int4 block size").
# 128 is the group size of OpenVINO's int4 default and of GPTQ/AWQ checkpoints; 256 is faster still and is
# left to --extra_options block_size=256.
OG_CPU_OPTION_DEFAULTS = {"block_size": "128", "qmoe_block_size": "128"}
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
    through onnxruntime's quantizer, warning filters: see ground/process_state.py), so it runs inside
    ``preserved_process_state``: validating options leaves no trace either. That context also puts back
    the folders an earlier call took off sys.path, which og's top-level imports of its siblings need
    (``onnxruntime_genai.models`` adds its folder only when it is first imported).
    """
    if name not in sys.modules:
        from .ground.process_state import preserved_process_state

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


def given_options_text(extra_options: dict[str, Any]) -> str:
    """The options as the user gave them: our defaults for og's keys (OG_OPTION_DEFAULTS, OG_CPU_OPTION_DEFAULTS) left out."""
    defaults = {**OG_OPTION_DEFAULTS, **OG_CPU_OPTION_DEFAULTS}
    given = {k: v for k, v in extra_options.items() if defaults.get(k) != v}
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
