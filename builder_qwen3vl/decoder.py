"""model.onnx: the og model builder's Qwen3-VL text decoder, widened to carry DeepStack features.

``build_decoder`` drives og's builder (``onnxruntime_genai.models.builder``) the way og's own
``create_model`` does, with ``DeepStackQwen3VLTextModel`` (deepstack_decoder.py: a W-wide
``inputs_embeds`` and the D DeepStack adds) in place of og's ``Qwen3VLTextModel``. Weights, attention,
MRoPE and quantization are og's own code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import io_spec
from .errors import InputError
from .deepstack_decoder import make_model_class
from .og_builder import (QWEN3_VL_ARCHITECTURE, given_options_text, og_builder, og_option_strings,
                         og_output_to_debug_log, stamp_with_package_commit, translate_int4_aliases)
from .repeat_kv_fix import drop_repeat_kv_shape_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderBuild:
    """What the bundle writer needs from the decoder build."""

    path: Path  # model.onnx
    og_genai_config: dict[str, Any]  # the genai_config og's builder made for this graph (not written to the bundle)
    io_dtype: str  # "float32" / "float16" / "bfloat16": dtype of inputs_embeds, logits and the KV cache
    hidden_size: int  # H
    stream_width: int  # (1 + D) * H: inputs_embeds width = decoder.hidden_size in genai_config
    deepstack_layers: int  # D
    num_layers: int
    apply_deepstack: bool


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
    """Build model.onnx (+ model.onnx.data) into ``output_dir``.

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
        with og_output_to_debug_log():
            try:
                prepared = builder.parse_extra_options(
                    None, input_dir, output_dir, precision, execution_provider, cache_dir, og_option_strings(options)
                )
            except ValueError as e:  # og validates option values here: a user input error
                given = given_options_text(extra_options or {})
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
                model = make_model_class()(
                    config, io_dtype, onnx_dtype, execution_provider, cache_dir, prepared,
                    deepstack_layers=deepstack_layers, apply_deepstack=deepstack,
                )
            except ValueError as e:  # og converts option values here (e.g. int(block_size)): a user input error
                given = given_options_text(extra_options or {})
                raise InputError(f"og builder rejected the settings: {e} (--extra_options given: {given})") from e
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            model.spill_before_quantizing = spill_before_quantizing
            model.make_model(input_dir)
            with stamp_with_package_commit(model):
                model.save_model(output_dir)
            drop_repeat_kv_shape_labels(Path(output_dir) / io_spec.DECODER_FILENAME)
            # og's genai_config describes the graph it built (io names, session options, KV sharing); the
            # bundle's genai_config.json is written once, by genai_config.py, from it and the plan.
            og_config_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="og_genai_"))
            model.make_genai_config(config, hf_details["extra_kwargs"], og_config_dir)
            genai = json.loads((Path(og_config_dir) / "genai_config.json").read_text())
    build = DecoderBuild(
        path=Path(output_dir) / genai["model"]["decoder"]["filename"],
        og_genai_config=genai,
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
