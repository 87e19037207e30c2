"""model.onnx: the og model builder's Qwen3-VL text decoder, widened to carry DeepStack features.

The og builder (``onnxruntime_genai.models.builder``, class ``Qwen3VLTextModel``) builds the
decoder; ``DeepStackQwen3VLTextModel`` changes only where the hidden stream enters:

- ``inputs_embeds`` is ``[B, S, (1 + D) * H]``; a Split cuts it into the hidden stream
  (columns 0:H) and D DeepStack blocks.
- HF adds DeepStack block k to the hidden state leaving decoder layer k (k < D). In og's graph
  that sum (residual + MLP output) is formed inside the next layer's fused
  SkipSimplifiedLayerNormalization (inputs: root = residual, skip = MLP output; output 3 = the sum,
  which becomes the next residual). So block k is added to the ``root`` input of layer k+1's
  input_layernorm: both the normalized output and the residual that flows on then carry it.

Everything else (weights, attention, MRoPE, quantization, genai_config) is og's own code,
driven the way og's ``create_model`` drives it, with og's helpers for dtypes and extra options.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import inspect
import io
import json
import logging
import re
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from . import io_spec
from .errors import InputError

log = logging.getLogger(__name__)

OG_MODEL_TYPE = "qwen3_vl"  # what onnxruntime-genai 0.18 accepts; og's builder writes "qwen3vl"
QWEN3_VL_ARCHITECTURE = "Qwen3VLForConditionalGeneration"
# og's help text calls these "deprecated aliases that still work", but og 0.18 reads only the
# unprefixed names: an int4_* key would be silently ignored, so we translate it.
OG_INT4_ALIASES = ("accuracy_level", "algo_config", "block_size", "is_symmetric", "nodes_to_exclude", "op_types_to_quantize")


def og_builder() -> ModuleType:
    """og's builder module, imported the way og's own CLI imports it.

    ``onnxruntime_genai.models`` puts its folder on sys.path and builder.py imports its siblings
    as top-level ``builders``/``builder_config``; subclass the classes from *that* import.
    """
    import onnxruntime_genai.models.builder as builder

    return builder


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


def _make_model_class() -> type:
    """Define the subclass against og's Qwen3VLTextModel as the og builder imports it."""
    base = og_builder().Qwen3VLTextModel

    class DeepStackQwen3VLTextModel(base):  # type: ignore[misc, valid-type]
        """og's Qwen3VLTextModel with a (1 + D) * H wide ``inputs_embeds`` and DeepStack adds."""

        def __init__(self, config, io_dtype, onnx_dtype, ep, cache_dir, extra_options, *, deepstack_layers: int, apply_deepstack: bool = True):
            super().__init__(config, io_dtype, onnx_dtype, ep, cache_dir, extra_options)
            if not self.exclude_embeds:
                raise ValueError("DeepStack decoder: extra option exclude_embeds must be true (the embedding is a separate model)")
            if deepstack_layers >= self.num_layers:
                raise ValueError(
                    f"DeepStack decoder: {deepstack_layers} DeepStack layers need at least {deepstack_layers + 1} "
                    f"decoder layers, the model has {self.num_layers}"
                )
            self.deepstack_layers = deepstack_layers
            self.apply_deepstack = apply_deepstack
            self.stream_width = (1 + deepstack_layers) * self.hidden_size
            self.deepstack_blocks: list[str] = []  # Split outputs 1..D, set when layer 0 is made
            self.spill_before_quantizing = False  # see spill_to_disk; build_decoder sets it for large checkpoints

        def make_inputs_and_outputs(self):
            self.input_shapes["inputs_embeds"] = ["batch_size", "sequence_length", self.stream_width]
            super().make_inputs_and_outputs()

        def make_layer(self, layer_id, layer):
            if layer_id == 0:
                self._split_wide_stream()
            elif self.apply_deepstack and layer_id <= self.deepstack_layers:
                self._add_deepstack_to_residual(layer_id)
            super().make_layer(layer_id, layer)

        def _split_wide_stream(self) -> None:
            embeds = self.input_names["inputs_embeds"]
            if self.layernorm_attrs["root_input"] != embeds or self.layernorm_attrs["skip_input"] != embeds:
                raise RuntimeError(
                    "og builder: layer 0 does not read inputs_embeds directly "
                    f"(root_input={self.layernorm_attrs['root_input']!r}); the DeepStack split cannot be placed"
                )
            name = "/model/deepstack/Split"
            outputs = [f"{name}/output_{i}" for i in range(1 + self.deepstack_layers)]
            self.make_split(
                name,
                [embeds],
                outputs,
                dtypes=[self.io_dtype] * len(outputs),
                shapes=[self.make_hidden_state_shape()] * len(outputs),
                axis=-1,
                num_outputs=len(outputs),
            )
            self.layernorm_attrs["root_input"] = outputs[0]
            self.layernorm_attrs["skip_input"] = outputs[0]
            self.deepstack_blocks = outputs[1:]

        def _add_deepstack_to_residual(self, layer_id: int) -> None:
            # root_input is the residual leaving layer_id - 1's attention; this layer's
            # SkipLayerNorm adds the MLP output to it, giving HF's hidden state after layer_id - 1.
            residual = self.layernorm_attrs["root_input"]
            dtype = self.values[residual].dtype  # float32 when og keeps the residual in fp32 (fp16 io)
            block = self.deepstack_blocks[layer_id - 1]
            if dtype != self.io_dtype:
                cast = f"/model/deepstack/layers.{layer_id}/Cast"
                self.make_cast(cast, block, dtype, shape=self.make_hidden_state_shape())
                block = f"{cast}/output_0"
            add = f"/model/deepstack/layers.{layer_id}/Add"
            self.make_add(add, [residual, block], dtype, shape=self.make_hidden_state_shape())
            self.layernorm_attrs["root_input"] = f"{add}/output_0"

        def save_model(self, out_dir):
            if self.spill_before_quantizing and self._quantizes():
                with tempfile.TemporaryDirectory(prefix="float_decoder_", dir=out_dir) as scratch:
                    self.model = spill_to_disk(self.model, Path(scratch))
                    # og's graph and value table still reference the lazy float tensors (and through them
                    # the checkpoint); nothing after this point reads them.
                    self.graph, self.values = self.model.graph, {}
                    gc.collect()
                    super().save_model(out_dir)
            else:
                super().save_model(out_dir)

        def _quantizes(self) -> bool:
            """True when og's save_model will run onnxruntime's default weight-only quantizer on MatMuls only.

            Only that path reads each weight through onnx_ir, which follows the spilled tensors' absolute
            locations; the rtn / k_quant paths and Gather quantization use onnx.numpy_helper, which refuses them.
            """
            nbits = {"INT4", "UINT4", "INT8", "UINT8"}
            prequantized_qdq = self.quant_type is not None and self.quant_attrs["use_qdq"]
            constant_gathers = any(
                node.op_type == "Gather" and node.inputs[0] is not None and node.inputs[0].const_value is not None
                for node in self.model.graph
            )  # none with exclude_embeds; a table lookup would be one
            return (
                self.onnx_dtype.name in nbits and not prequantized_qdq
                and getattr(self, "quantization_algo", "default") == "default"
                and not ("Gather" in self.quant_attrs["op_types_to_quantize"] and constant_gathers)
            )

        def make_genai_config(self, config, extra_kwargs, out_dir):
            super().make_genai_config(config, extra_kwargs, out_dir)
            path = Path(out_dir) / "genai_config.json"
            genai = json.loads(path.read_text())
            genai["model"]["type"] = OG_MODEL_TYPE
            genai["model"]["decoder"]["hidden_size"] = self.stream_width
            path.write_text(json.dumps(genai, indent=4))

    return DeepStackQwen3VLTextModel


def spill_to_disk(model: Any, folder: Path) -> Any:
    """Write og's float graph to ``folder`` and return it with every initializer read back lazily from there.

    og's int4 step (``to_nbits``) serialises the whole float model into one protobuf for onnxruntime's
    quantizer while the checkpoint's memory-mapped tensors are still referenced: for the 2B that peaks at
    13 GiB. Saved first (one tensor at a time), the float weights never sit in memory together, and the
    quantizer reads each weight from the file when it reaches its node. Locations are absolute because
    onnxruntime's quantizer resolves them without a base folder. Costs a float32 copy of the decoder on
    disk while it runs (2B: 7 GB, 4B: 16 GB), inside the output folder being built.
    """
    import onnx_ir as ir

    path = folder / "float_model.onnx"
    ir.save(model, path, external_data="float_model.onnx.data", size_threshold_bytes=0)
    spilled = ir.load(path)
    for value in spilled.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            value.const_value = ir.ExternalTensor(
                folder / tensor.location, tensor.offset, tensor.length, tensor.dtype,
                shape=tensor.shape, name=tensor.name, base_dir="",
            )
    return spilled


@dataclass(frozen=True)
class DecoderBuild:
    """What the bundle writer needs from the decoder build."""

    path: Path  # model.onnx
    genai_config: dict[str, Any]  # og's genai_config.json (type and decoder.hidden_size already fixed)
    io_dtype: str  # "float32" / "float16" / "bfloat16": dtype of inputs_embeds, logits and the KV cache
    hidden_size: int  # H
    stream_width: int  # (1 + D) * H: inputs_embeds width = decoder.hidden_size in genai_config
    deepstack_layers: int  # D
    num_layers: int
    apply_deepstack: bool


@contextlib.contextmanager
def _og_output_to_debug_log() -> Iterator[None]:
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


def _given_options_text(extra_options: dict[str, Any]) -> str:
    """The options as the user gave them: our defaults for og's keys (options.OG_OPTION_DEFAULTS) left out."""
    from .options import OG_OPTION_DEFAULTS

    given = {k: v for k, v in extra_options.items() if OG_OPTION_DEFAULTS.get(k) != v}
    return " ".join(_og_option_strings(given)) or "none"


def _og_option_strings(extra_options: dict[str, Any]) -> list[str]:
    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    return [f"{key}={text(value)}" for key, value in extra_options.items()]


def _drop_repeat_kv_shape_labels(model_path: Path) -> None:
    """Remove og's value_info for the repeat_kv tensors of its MultiHeadAttention decoders (fp16 on CPU).

    og labels their KV length "sequence_length" where it is past + new tokens; onnxruntime 1.31's
    memory planner trusts the label and reuses a prefill-sized buffer at the first decode step
    ("Shape mismatch attempting to re-use buffer"). Without the entries onnxruntime infers the
    shapes itself. GroupQueryAttention graphs (fp32/int4) have no repeat_kv and are left untouched.
    """
    import onnx

    if not model_path.is_file():
        return
    model = onnx.load(str(model_path), load_external_data=False)
    keep = [info for info in model.graph.value_info if "/repeat_kv/" not in info.name]
    dropped = len(model.graph.value_info) - len(keep)
    if not dropped:
        return
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    onnx.save(model, str(model_path))
    log.debug("decoder: dropped %d repeat_kv value_info entries (KV length mislabelled by og)", dropped)


def build_decoder(
    input_dir: str | Path,
    output_dir: str | Path,
    precision: str,
    execution_provider: str = "cpu",
    cache_dir: str | Path | None = None,
    extra_options: dict[str, Any] | None = None,
    deepstack: bool = True,
    spill_before_quantizing: bool = False,
) -> DecoderBuild:
    """Build model.onnx (+ model.onnx.data) and og's genai_config.json into ``output_dir``.

    ``extra_options`` use og's names (``block_size``, ``accuracy_level``, ...; ``int4_*`` aliases are
    translated). ``deepstack=False`` builds the same wide-input graph without the DeepStack adds
    (a testing aid: parity against HF must then fail). ``spill_before_quantizing`` trades a temporary
    float copy on disk (inside ``output_dir``) for peak memory during quantization (``spill_to_disk``).
    """
    builder = og_builder()
    options = translate_int4_aliases(extra_options or {})
    if str(options.get("exclude_embeds", "true")).lower() not in ("true", "1"):
        raise ValueError("extra option exclude_embeds: the DeepStack decoder needs exclude_embeds=true")
    options["exclude_embeds"] = "true"
    input_dir, output_dir = str(input_dir), str(output_dir)
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="og_cache_"))
        cache_dir = str(cache_dir)
        with _og_output_to_debug_log():
            try:
                prepared = builder.parse_extra_options(
                    None, input_dir, output_dir, precision, execution_provider, cache_dir, _og_option_strings(options)
                )
            except ValueError as e:  # og validates option values here: a user input error
                given = _given_options_text(extra_options or {})
                raise InputError(f"og builder rejected the settings: {e} (--extra_options given: {given})") from e
            effective = prepared.pop("_effective_builder_config", None)
            precision = effective.precision if effective is not None else precision
            hf_details = prepared.pop("hf_details")
            config = hf_details["hf_config"]
            architecture = (getattr(config, "architectures", None) or ["?"])[0]
            if architecture != QWEN3_VL_ARCHITECTURE:
                raise ValueError(f"{input_dir}/config.json: architecture is {architecture}, expected {QWEN3_VL_ARCHITECTURE}")
            io_dtype = builder.set_io_dtype(precision, execution_provider, prepared)
            onnx_dtype = builder.set_onnx_dtype(precision, prepared)
            deepstack_layers = len(config.vision_config.deepstack_visual_indexes)
            try:
                model = _make_model_class()(
                    config, io_dtype, onnx_dtype, execution_provider, cache_dir, prepared,
                    deepstack_layers=deepstack_layers, apply_deepstack=deepstack,
                )
            except ValueError as e:  # og converts option values here (e.g. int(block_size)): a user input error
                given = _given_options_text(extra_options or {})
                raise InputError(f"og builder rejected the settings: {e} (--extra_options given: {given})") from e
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            model.spill_before_quantizing = spill_before_quantizing
            model.make_model(input_dir)
            model.save_model(output_dir)
            _drop_repeat_kv_shape_labels(Path(output_dir) / io_spec.DECODER_FILENAME)
            model.make_genai_config(config, hf_details["extra_kwargs"], output_dir)
    genai = json.loads((Path(output_dir) / "genai_config.json").read_text())
    build = DecoderBuild(
        path=Path(output_dir) / genai["model"]["decoder"]["filename"],
        genai_config=genai,
        io_dtype={"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16"}[model.io_dtype.name],
        hidden_size=model.hidden_size,
        stream_width=model.stream_width,
        deepstack_layers=deepstack_layers,
        num_layers=model.num_layers,
        apply_deepstack=deepstack,
    )
    if build.path.name != io_spec.DECODER_FILENAME:
        log.warning("decoder written as %s, not %s (extra option filename)", build.path.name, io_spec.DECODER_FILENAME)
    log.info(
        "decoder %s: %s io, %d layers, inputs_embeds width %d = (1 + %d) x %d, DeepStack %s",
        build.path, build.io_dtype, build.num_layers, build.stream_width, deepstack_layers, build.hidden_size,
        "on" if deepstack else "OFF",
    )
    return build
