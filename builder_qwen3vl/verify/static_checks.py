"""verify's static checks: files, graph inputs/outputs, one W everywhere, DeepStack wiring, processor config.

No onnxruntime session: graphs are read with ``load_external_data=False`` (seconds even for 8B). Every file
read, and every file the bundle names, must lie inside the bundle folder (``ground.bundle_paths.bundle_file``, the
rule the run-time helpers apply too); one that does not is a failed check naming the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..ground.contract import GENAI_CONFIG_FILENAME as GENAI_CONFIG
from ..ground.contract import OG_DEFAULT_NAMES, OG_MODEL_TYPE, TOKENIZER_FILES, VIDEO_CONFIG_FILENAME
from ..ground.bundle_paths import BundlePathError, bundle_file
from ..ground.tokens import ENDOFTEXT_ID
from ..ground.video_settings import VideoSettings
from .graphs import FLOAT_TYPES, Graph, dtype_of, expect, load_graph, text_hidden_size, unfed_inputs

if TYPE_CHECKING:
    from .report import VerifyReport

REQUIRED_MODEL_FIELDS = ("context_length", "vocab_size", "image_token_id", "vision_start_token_id", "pad_token_id", "eos_token_id")
REQUIRED_DECODER_FIELDS = ("head_size", "hidden_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads")
def static_checks(bundle: Path, report: VerifyReport) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    config = _inside(bundle, GENAI_CONFIG, None, report)
    genai = _read_json(config, report) if config is not None else None
    if genai is None:
        return facts
    model = genai.get("model") or {}
    if not _config_fields(model, report):
        return facts
    stream_width = int(model["decoder"]["hidden_size"])  # og's name for W
    facts.update(stream_width=stream_width, provider=_providers(model["decoder"]))
    files = _named_files(bundle, model, report)
    processor = _read_json(files["vision config"], report) if "vision config" in files else None
    graphs = {role: load_graph(path, report, bundle) for role, path in files.items() if path.suffix == ".onnx"}
    if any(g is None for g in graphs.values()) or len(graphs) < 3:
        return facts
    vision, embedding, decoder = graphs["vision"], graphs["embedding"], graphs["decoder"]
    _check_vision(vision, model["vision"], stream_width, _patch_dim(processor), report)
    _check_embedding(embedding, model["embedding"], stream_width, vision, report)
    _check_decoder(decoder, model, stream_width, embedding, report)
    facts["io_dtype"] = dtype_of(decoder, model["decoder"].get("inputs", {}), "inputs_embeds")
    _check_deepstack(decoder, model["decoder"], stream_width, report)
    if processor is not None:
        _check_processor(processor, files["vision config"], report)
    video = _inside(bundle, VIDEO_CONFIG_FILENAME, None, report)
    if video is not None:
        _check_video(video, model["vision"], report)
    return facts


def _inside(bundle: Path, name: Any, named_by: str | None, report: VerifyReport) -> Path | None:
    """``bundle / name`` under the bundle path rule; None (and a failure naming file and key) outside it."""
    try:
        return bundle_file(bundle, name, named_by)
    except BundlePathError as e:
        report.escape(str(e))
        return None


def _read_json(path: Path, report: VerifyReport) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.failures.append(f"{path.name}: missing")
        return None
    except (OSError, ValueError) as e:
        report.failures.append(f"{path.name}: not readable JSON ({e})")
        return None
    if not isinstance(data, dict):
        report.failures.append(f"{path.name}: expected a JSON object")
        return None
    return data


def _config_fields(model: dict[str, Any], report: VerifyReport) -> bool:
    before = len(report.failures)
    if model.get("type") != OG_MODEL_TYPE:
        report.failures.append(f"{GENAI_CONFIG}: model.type is {model.get('type')!r}, expected {OG_MODEL_TYPE!r} (og 0.18 rejects other names)")
    for key in REQUIRED_MODEL_FIELDS:
        if key not in model:
            report.failures.append(f"{GENAI_CONFIG}: model.{key} is missing")
    for section in ("decoder", "embedding", "vision"):
        if not isinstance(model.get(section), dict):
            report.failures.append(f"{GENAI_CONFIG}: model.{section} section is missing")
    for key in REQUIRED_DECODER_FIELDS:
        if key not in (model.get("decoder") or {}):
            report.failures.append(f"{GENAI_CONFIG}: model.decoder.{key} is missing")
    if model.get("pad_token_id") == 0:
        report.failures.append(
            f"{GENAI_CONFIG}: model.pad_token_id is 0: og would give every prompt token 0 ('!') position 0 and mask 0; "
            f"expected <|endoftext|> ({ENDOFTEXT_ID})"
        )
    if len(report.failures) == before:
        report.passed.append(f"{GENAI_CONFIG}: type {OG_MODEL_TYPE}, decoder.hidden_size {model['decoder']['hidden_size']}")
        return True
    return False


def _providers(section: dict[str, Any]) -> list[str]:
    options = (section.get("session_options") or {}).get("provider_options") or []
    return [name for entry in options for name in entry] or ["cpu"]


def _named_files(bundle: Path, model: dict[str, Any], report: VerifyReport) -> dict[str, Path]:
    named = {
        "decoder": ("model.decoder.filename", model["decoder"].get("filename")),
        "embedding": ("model.embedding.filename", model["embedding"].get("filename")),
        "vision": ("model.vision.filename", model["vision"].get("filename")),
        "vision config": ("model.vision.config_filename", model["vision"].get("config_filename")),
    }
    found: dict[str, Path] = {}
    for role, (key, name) in named.items():
        if not name:
            report.failures.append(f"{GENAI_CONFIG}: {key} is missing")
        elif (path := _inside(bundle, name, f"{GENAI_CONFIG} {key}", report)) is None:
            continue
        elif not path.is_file():
            report.failures.append(f"{name}: missing (named by {GENAI_CONFIG} {key})")
        else:
            found[role] = path
    for name in TOKENIZER_FILES:
        if (path := _inside(bundle, name, None, report)) is not None and not path.is_file():
            report.failures.append(f"{name}: missing (og's tokenizer needs it)")
    if len(found) == len(named):
        report.passed.append("files: " + ", ".join(p.name for p in found.values()) + ", " + ", ".join(TOKENIZER_FILES))
    return found


def _names(section: dict[str, Any], role: str, kind: str) -> dict[str, str]:
    """og's key -> graph name, from genai_config (og falls back to its defaults for absent keys)."""
    return {**OG_DEFAULT_NAMES[role][kind], **(section.get(kind) or {})}


def _check_vision(graph: Graph, section: dict[str, Any], stream_width: int, patch_dim: int | None, report: VerifyReport) -> None:
    ins, outs = _names(section, "vision", "inputs"), _names(section, "vision", "outputs")
    before = len(report.failures)
    expect(graph, "input", ins["pixel_values"], report, dtypes=FLOAT_TYPES, rank=2, fixed={1: patch_dim} if patch_dim else None)
    expect(graph, "input", ins["image_grid_thw"], report, dtypes=("int64",), rank=2, fixed={1: 3})
    expect(graph, "output", outs["image_features"], report, dtypes=FLOAT_TYPES, rank=2, fixed={1: stream_width})
    unfed_inputs(graph, {ins["pixel_values"], ins["image_grid_thw"]}, report)
    if len(report.failures) == before:
        report.passed.append(f"{graph.path.name}: pixel_values [N, {patch_dim}], image_grid_thw [I, 3] -> image_features [T, {stream_width}]")


def _check_embedding(graph: Graph, section: dict[str, Any], stream_width: int, vision: Graph, report: VerifyReport) -> None:
    ins, outs = _names(section, "embedding", "inputs"), _names(section, "embedding", "outputs")
    before = len(report.failures)
    expect(graph, "input", ins["input_ids"], report, dtypes=("int64",), rank=2)
    features = expect(graph, "input", ins["image_features"], report, dtypes=FLOAT_TYPES, rank=2, fixed={1: stream_width})
    expect(graph, "output", outs["inputs_embeds"], report, dtypes=FLOAT_TYPES, rank=3, fixed={2: stream_width})
    vision_out = next(iter(vision.outputs.values()), None)
    if features is not None and vision_out is not None and features.dtype != vision_out.dtype:
        report.failures.append(
            f"{graph.path.name} input 'image_features' is {features.dtype} but {vision.path.name} writes {vision_out.dtype}: "
            "og passes the buffer through unchanged"
        )
    unfed_inputs(graph, {ins["input_ids"], ins["image_features"]}, report)
    if len(report.failures) == before:
        report.passed.append(f"{graph.path.name}: input_ids, image_features [T, {stream_width}] -> inputs_embeds [B, S, {stream_width}]")


def _check_decoder(graph: Graph, model: dict[str, Any], stream_width: int, embedding: Graph, report: VerifyReport) -> None:
    section = model["decoder"]
    ins, outs = _names(section, "decoder", "inputs"), _names(section, "decoder", "outputs")
    layers, kv_heads, head = (int(section[k]) for k in ("num_hidden_layers", "num_key_value_heads", "head_size"))
    before = len(report.failures)
    embeds = expect(graph, "input", ins["inputs_embeds"], report, dtypes=FLOAT_TYPES, rank=3, fixed={2: stream_width})
    produced = embedding.outputs.get(_names(model["embedding"], "embedding", "outputs")["inputs_embeds"])
    if embeds is not None and produced is not None and embeds.dtype != produced.dtype:
        report.failures.append(
            f"{graph.path.name} input '{embeds.name}' is {embeds.dtype} but {embedding.path.name} writes {produced.dtype}: "
            "og passes the buffer through unchanged"
        )
    expect(graph, "input", ins["attention_mask"], report, dtypes=("int64", "int32"), rank=2)
    expect(graph, "input", ins["position_ids"], report, dtypes=("int64", "int32"), rank=3, fixed={0: 3})
    kv_dims = {1: kv_heads, 3: head}
    fed = {ins["inputs_embeds"], ins["attention_mask"], ins["position_ids"]}
    fed |= {ins[key] % i for key in ("past_key_names", "past_value_names") for i in range(layers)}
    for kind, key, table in (("input", "past_key_names", ins), ("input", "past_value_names", ins),
                             ("output", "present_key_names", outs), ("output", "present_value_names", outs)):
        for i in range(layers):  # one failure per kind is enough: the rest repeat it
            if expect(graph, kind, table[key] % i, report, dtypes=FLOAT_TYPES + ("int8", "uint8"), rank=4, loose=kv_dims) is None:
                break
    logits = expect(graph, "output", outs["logits"], report, dtypes=FLOAT_TYPES, rank=3, fixed={2: int(model["vocab_size"])})
    unfed_inputs(graph, fed, report)
    if len(report.failures) == before and logits is not None:
        report.passed.append(
            f"{graph.path.name}: inputs_embeds [B, S, {stream_width}] {embeds.dtype if embeds else '?'}, position_ids [3, B, S], "
            f"{layers} x KV [B, {kv_heads}, P, {head}] -> logits [B, {'1 (pruned lm_head)' if logits.dims[1] == 1 else 'S'}, "
            f"{model['vocab_size']}]"
        )


def _check_deepstack(graph: Graph, section: dict[str, Any], stream_width: int, report: VerifyReport) -> None:
    hidden = text_hidden_size(graph.model)
    if hidden is None:
        report.failures.append(f"{graph.path.name}: cannot find the final norm weight before the logits to read the text hidden size H")
        return
    if stream_width % hidden:
        report.failures.append(
            f"{GENAI_CONFIG}: decoder.hidden_size {stream_width} is not a multiple of the text hidden size H={hidden} "
            f"(from {graph.path.name}'s final norm); expected (1 + D) * {hidden}"
        )
        return
    num_deepstack = stream_width // hidden - 1
    embeds = _names(section, "decoder", "inputs")["inputs_embeds"]
    consumers = [node for node in graph.model.graph.node if embeds in node.input]
    if num_deepstack == 0:
        report.passed.append(f"{graph.path.name}: H={hidden}, no DeepStack columns (D=0)")
        return
    split = next((n for n in consumers if n.op_type == "Split"), None)
    if split is None or len(split.output) != 1 + num_deepstack:
        found = f"a Split into {len(split.output)}" if split is not None else "no Split"
        report.failures.append(
            f"{graph.path.name}: inputs_embeds width {stream_width} = (1 + {num_deepstack}) x {hidden} needs a Split into {1 + num_deepstack} "
            f"blocks; found {found}"
        )
        return
    used = {name for node in graph.model.graph.node for name in node.input}
    unused = [k for k, name in enumerate(split.output) if name not in used]
    if unused:
        report.failures.append(
            f"{graph.path.name}: DeepStack block(s) {', '.join(map(str, unused))} of inputs_embeds are never used "
            "(a decoder built with apply_deepstack=False, or a broken graph): image answers would differ from HF"
        )
        return
    report.passed.append(f"{graph.path.name}: DeepStack wide stream (1 + {num_deepstack}) x H={hidden} = {stream_width}, all {num_deepstack} blocks wired")


def _patch_dim(processor: dict[str, Any] | None) -> int | None:
    attrs = _processor_attrs(processor or {}).get("PatchImage")
    if not attrs:
        return None
    return 3 * int(attrs.get("temporal_patch_size", 2)) * int(attrs.get("patch_size", 16)) ** 2


def _processor_attrs(processor: dict[str, Any]) -> dict[str, dict[str, Any]]:
    transforms = (processor.get("processor") or {}).get("transforms") or []
    return {t["operation"]["type"]: t["operation"].get("attrs", {}) for t in transforms if "operation" in t}


def _check_processor(processor: dict[str, Any], path: Path, report: VerifyReport) -> None:
    attrs = _processor_attrs(processor)
    before = len(report.failures)
    for op in ("Resize", "Normalize", "PatchImage"):
        if op not in attrs:
            report.failures.append(f"{path.name}: no {op} transform")
    if "Normalize" in attrs and attrs["Normalize"].get("qwen3_vl") != 1:
        report.failures.append(f"{path.name}: Normalize lacks \"qwen3_vl\": 1 (og would swap red and blue)")
    if "Resize" in attrs and not {"min_pixels", "max_pixels"} <= set(attrs["Resize"]):
        report.failures.append(f"{path.name}: Resize lacks min_pixels/max_pixels (og's defaults are Qwen2.5-VL's)")
    if len(report.failures) == before:
        resize = attrs["Resize"]
        report.passed.append(f"{path.name}: qwen3_vl normalize, pixels {resize['min_pixels']}..{resize['max_pixels']}")


def _check_video(path: Path, vision: dict[str, Any], report: VerifyReport) -> None:
    """The checkpoint's video settings (builder_qwen3vl.runtime.video reads them; og does not), on the tower's sizes."""
    if not path.is_file():  # a bundle built before the file: its video would use transformers' defaults
        report.failures.append(f"{path.name}: missing (the checkpoint's video settings; rebuild the bundle)")
        return
    doc = _read_json(path, report)
    if doc is None:
        return
    try:
        video = VideoSettings.from_dict(doc, path.name)
    except ValueError as e:
        report.failures.append(str(e))
        return
    for key, ours, tower_key in (("merge_size", video.merge_size, "spatial_merge_size"), ("patch_size", video.patch_size, "patch_size")):
        if tower_key in vision and int(vision[tower_key]) != ours:
            report.failures.append(f"{path.name}: {key} is {ours} but {GENAI_CONFIG} model.vision.{tower_key} is {vision[tower_key]}")
            return
    report.passed.append(f"{path.name}: {video.fps} fps, {video.min_frames}..{video.max_frames} frames, pixels "
                         f"{video.min_pixels}..{video.max_pixels}, merge {video.merge_size}")


# ---------------------------------------------------------------- run check (og, in a child process)
