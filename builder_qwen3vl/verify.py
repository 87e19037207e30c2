"""``verify``: check a built bundle before anyone ships it.

Static checks (no onnxruntime session): every file genai_config.json names exists; each ONNX
model's inputs/outputs have the names, dtypes and ranks og 0.18 feeds and reads; the wide
DeepStack stream has one width everywhere (decoder.hidden_size == vision output width ==
embeddings input/output width == decoder inputs_embeds width == (1 + D) * H, with H read from
the decoder graph's final norm weight); the decoder splits inputs_embeds into 1 + D blocks and
uses every DeepStack block. Graphs are read with ``load_external_data=False``: seconds even for 8B.

Run check: a child process loads the bundle with onnxruntime-genai and generates a few tokens
for a generated test image and for text only (a child, so an abort inside og is reported
rather than killing verify). The contract the checks enforce is
../shared/notes/ogenai-qwen3vl-runtime-contract.md.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BuildError, InputError

log = logging.getLogger(__name__)

GENAI_CONFIG = "genai_config.json"
OG_MODEL_TYPE = "qwen3_vl"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
REQUIRED_MODEL_FIELDS = ("context_length", "vocab_size", "image_token_id", "vision_start_token_id", "pad_token_id", "eos_token_id")
REQUIRED_DECODER_FIELDS = ("head_size", "hidden_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads")
FLOAT_TYPES = ("float32", "float16", "bfloat16")
_RESULT_TAG = "VERIFY_RESULT "
_STAGE_TAG = "VERIFY_STAGE "
_MAX_ERROR = 300  # characters of og's error kept in the one-line reason (onnxruntime's can run to 600+)
TEST_IMAGE_SIDE = 256  # 256 x 256 = Qwen3-VL's min_pixels: no resize, grid [1, 16, 16], 64 image tokens


class VerifyError(BuildError):
    """The bundle failed a check; exit code 1."""


@dataclass(frozen=True)
class Tensor:
    """One graph input or output: og's dtype name and dims (int, symbolic name, or None)."""

    name: str
    dtype: str
    dims: tuple[int | str | None, ...]

    @property
    def rank(self) -> int:
        return len(self.dims)


@dataclass
class Graph:
    path: Path
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    model: Any  # onnx.ModelProto without tensor data


@dataclass
class VerifyReport:
    bundle: Path
    passed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    generation: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        out = [f"ok    {line}" for line in self.passed] + [f"FAIL  {line}" for line in self.failures]
        verdict = "passed" if self.ok else f"FAILED ({len(self.failures)} problem(s))"
        out.append(f"verify {self.bundle}: {verdict}")
        return out

    def raise_for_failure(self) -> None:
        if self.failures:
            raise VerifyError(f"verify {self.bundle}: {self.failures[0]}")


def verify_bundle(bundle: str | Path, *, run: bool = True, max_new_tokens: int = 4, timeout: float = 600.0) -> VerifyReport:
    """Check ``bundle``; with ``run`` also generate with og. Failures are collected, not raised."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise InputError(f"verify {bundle}: expected a bundle folder (with {GENAI_CONFIG}), found {'a file' if bundle.exists() else 'nothing'}")
    report = VerifyReport(bundle)
    facts = _static_checks(bundle, report)
    if not run:
        report.passed.append("run: skipped (--static-only)")
    elif not report.ok:
        report.failures.append("run: skipped because the static checks failed (og would fail less clearly)")
    else:
        _run_check(bundle, report, facts, max_new_tokens, timeout)
    return report


# ---------------------------------------------------------------- static checks


def _static_checks(bundle: Path, report: VerifyReport) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    genai = _read_json(bundle / GENAI_CONFIG, report)
    if genai is None:
        return facts
    model = genai.get("model") or {}
    if not _config_fields(model, report):
        return facts
    width = int(model["decoder"]["hidden_size"])
    facts.update(width=width, provider=_providers(model["decoder"]))
    files = _named_files(bundle, model, report)
    processor = _read_json(files["vision config"], report) if "vision config" in files else None
    graphs = {role: _load_graph(path, report) for role, path in files.items() if path.suffix == ".onnx"}
    if any(g is None for g in graphs.values()) or len(graphs) < 3:
        return facts
    vision, embedding, decoder = graphs["vision"], graphs["embedding"], graphs["decoder"]
    _check_vision(vision, model["vision"], width, _patch_dim(processor), report)
    _check_embedding(embedding, model["embedding"], width, vision, report)
    _check_decoder(decoder, model, width, embedding, report)
    facts["io_dtype"] = _dtype_of(decoder, model["decoder"].get("inputs", {}), "inputs_embeds")
    _check_deepstack(decoder, model["decoder"], width, report)
    if processor is not None:
        _check_processor(processor, files["vision config"], report)
    return facts


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
            "expected <|endoftext|> (151643)"
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
        elif not (bundle / name).is_file():
            report.failures.append(f"{name}: missing (named by {GENAI_CONFIG} {key})")
        else:
            found[role] = bundle / name
    for name in TOKENIZER_FILES:
        if not (bundle / name).is_file():
            report.failures.append(f"{name}: missing (og's tokenizer needs it)")
    if len(found) == len(named):
        report.passed.append("files: " + ", ".join(p.name for p in found.values()) + ", " + ", ".join(TOKENIZER_FILES))
    return found


def _load_graph(path: Path, report: VerifyReport) -> Graph | None:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a truncated or foreign file: protobuf raises its own types
        report.failures.append(f"{path.name}: not a readable ONNX model ({type(e).__name__}: {e})")
        return None
    if not _external_data_present(path, proto, report):
        return None
    graph = Graph(path, _tensors(proto.graph.input), _tensors(proto.graph.output), proto)
    initializers = {init.name for init in proto.graph.initializer}
    for name in list(graph.inputs):  # old-style graphs list initializers as inputs too
        if name in initializers:
            del graph.inputs[name]
    return graph


def _external_data_present(path: Path, proto: Any, report: VerifyReport) -> bool:
    from onnx import TensorProto

    needed: dict[str, int] = {}
    for init in proto.graph.initializer:
        if init.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        location = info.get("location", "")
        needed[location] = max(needed.get(location, 0), end)
    for location, end in needed.items():
        data = path.parent / location
        if not data.is_file():
            report.failures.append(f"{location}: missing (external data of {path.name})")
            return False
        if data.stat().st_size < end:
            report.failures.append(f"{location}: truncated: {path.name} needs {end} bytes, the file has {data.stat().st_size}")
            return False
    return True


def _tensors(values: Any) -> dict[str, Tensor]:
    from onnx import helper

    out = {}
    for value in values:
        tensor_type = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        )
        dtype = str(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)) if tensor_type.elem_type else "?"
        out[value.name] = Tensor(value.name, "bfloat16" if tensor_type.elem_type == 16 else dtype, dims)
    return out


def _expect(graph: Graph, kind: str, name: str, report: VerifyReport, *, dtypes: tuple[str, ...],
            rank: int, fixed: dict[int, int] | None = None, loose: dict[int, int] | None = None) -> Tensor | None:
    """Check one named graph input/output; record a failure naming the file, tensor and expectation.

    ``fixed`` dims must be exactly that size; ``loose`` dims may also be symbolic (og's KV head dim is).
    """
    table = graph.inputs if kind == "input" else graph.outputs
    tensor = table.get(name)
    where = f"{graph.path.name} {kind} '{name}'"
    if tensor is None:
        report.failures.append(f"{where}: missing (graph {kind}s: {', '.join(table) or 'none'})")
        return None
    problems = []
    if tensor.dtype not in dtypes:
        problems.append(f"dtype {tensor.dtype}, expected {' or '.join(dtypes)}")
    if tensor.rank != rank:
        problems.append(f"rank {tensor.rank} {list(tensor.dims)}, expected rank {rank}")
    else:
        for axis, size in (fixed or {}).items():
            if tensor.dims[axis] != size:
                problems.append(f"dim {axis} is {tensor.dims[axis]!r}, expected {size}")
        for axis, size in (loose or {}).items():
            if isinstance(tensor.dims[axis], int) and tensor.dims[axis] != size:
                problems.append(f"dim {axis} is {tensor.dims[axis]}, expected {size}")
    if problems:
        report.failures.append(f"{where}: " + "; ".join(problems))
        return None
    return tensor


def _names(section: dict[str, Any], kind: str, defaults: dict[str, str]) -> dict[str, str]:
    """og's key -> graph name, from genai_config (og falls back to its defaults for absent keys)."""
    return {**defaults, **(section.get(kind) or {})}


def _unfed_inputs(graph: Graph, fed: set[str], report: VerifyReport) -> None:
    missing = sorted(set(graph.inputs) - fed)
    if missing:
        report.failures.append(f"{graph.path.name}: graph input(s) {', '.join(missing)} are not named in {GENAI_CONFIG}, og will not feed them")


def _check_vision(graph: Graph, section: dict[str, Any], width: int, patch_dim: int | None, report: VerifyReport) -> None:
    ins = _names(section, "inputs", {"pixel_values": "pixel_values", "image_grid_thw": "image_sizes"})
    outs = _names(section, "outputs", {"image_features": "image_features"})
    before = len(report.failures)
    _expect(graph, "input", ins["pixel_values"], report, dtypes=FLOAT_TYPES, rank=2, fixed={1: patch_dim} if patch_dim else None)
    _expect(graph, "input", ins["image_grid_thw"], report, dtypes=("int64",), rank=2, fixed={1: 3})
    _expect(graph, "output", outs["image_features"], report, dtypes=FLOAT_TYPES, rank=2, fixed={1: width})
    _unfed_inputs(graph, {ins["pixel_values"], ins["image_grid_thw"]}, report)
    if len(report.failures) == before:
        report.passed.append(f"{graph.path.name}: pixel_values [N, {patch_dim}], image_grid_thw [I, 3] -> image_features [T, {width}]")


def _check_embedding(graph: Graph, section: dict[str, Any], width: int, vision: Graph, report: VerifyReport) -> None:
    ins = _names(section, "inputs", {"input_ids": "input_ids", "image_features": "image_features"})
    outs = _names(section, "outputs", {"inputs_embeds": "inputs_embeds"})
    before = len(report.failures)
    _expect(graph, "input", ins["input_ids"], report, dtypes=("int64",), rank=2)
    features = _expect(graph, "input", ins["image_features"], report, dtypes=FLOAT_TYPES, rank=2, fixed={1: width})
    _expect(graph, "output", outs["inputs_embeds"], report, dtypes=FLOAT_TYPES, rank=3, fixed={2: width})
    vision_out = next(iter(vision.outputs.values()), None)
    if features is not None and vision_out is not None and features.dtype != vision_out.dtype:
        report.failures.append(
            f"{graph.path.name} input 'image_features' is {features.dtype} but {vision.path.name} writes {vision_out.dtype}: "
            "og passes the buffer through unchanged"
        )
    _unfed_inputs(graph, {ins["input_ids"], ins["image_features"]}, report)
    if len(report.failures) == before:
        report.passed.append(f"{graph.path.name}: input_ids, image_features [T, {width}] -> inputs_embeds [B, S, {width}]")


def _check_decoder(graph: Graph, model: dict[str, Any], width: int, embedding: Graph, report: VerifyReport) -> None:
    section = model["decoder"]
    ins = _names(section, "inputs", {
        "inputs_embeds": "inputs_embeds", "attention_mask": "attention_mask", "position_ids": "position_ids",
        "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"})
    outs = _names(section, "outputs", {
        "logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"})
    layers, kv_heads, head = (int(section[k]) for k in ("num_hidden_layers", "num_key_value_heads", "head_size"))
    before = len(report.failures)
    embeds = _expect(graph, "input", ins["inputs_embeds"], report, dtypes=FLOAT_TYPES, rank=3, fixed={2: width})
    produced = embedding.outputs.get(_names(model["embedding"], "outputs", {"inputs_embeds": "inputs_embeds"})["inputs_embeds"])
    if embeds is not None and produced is not None and embeds.dtype != produced.dtype:
        report.failures.append(
            f"{graph.path.name} input '{embeds.name}' is {embeds.dtype} but {embedding.path.name} writes {produced.dtype}: "
            "og passes the buffer through unchanged"
        )
    _expect(graph, "input", ins["attention_mask"], report, dtypes=("int64", "int32"), rank=2)
    _expect(graph, "input", ins["position_ids"], report, dtypes=("int64", "int32"), rank=3, fixed={0: 3})
    kv_dims = {1: kv_heads, 3: head}
    fed = {ins["inputs_embeds"], ins["attention_mask"], ins["position_ids"]}
    fed |= {ins[key] % i for key in ("past_key_names", "past_value_names") for i in range(layers)}
    for kind, key, table in (("input", "past_key_names", ins), ("input", "past_value_names", ins),
                             ("output", "present_key_names", outs), ("output", "present_value_names", outs)):
        for i in range(layers):  # one failure per kind is enough: the rest repeat it
            if _expect(graph, kind, table[key] % i, report, dtypes=FLOAT_TYPES + ("int8", "uint8"), rank=4, loose=kv_dims) is None:
                break
    logits = _expect(graph, "output", outs["logits"], report, dtypes=FLOAT_TYPES, rank=3, fixed={2: int(model["vocab_size"])})
    _unfed_inputs(graph, fed, report)
    if len(report.failures) == before and logits is not None:
        report.passed.append(
            f"{graph.path.name}: inputs_embeds [B, S, {width}] {embeds.dtype if embeds else '?'}, position_ids [3, B, S], "
            f"{layers} x KV [B, {kv_heads}, P, {head}] -> logits [B, {'1 (pruned lm_head)' if logits.dims[1] == 1 else 'S'}, "
            f"{model['vocab_size']}]"
        )


def _dtype_of(graph: Graph, names: dict[str, str], key: str) -> str | None:
    tensor = graph.inputs.get(names.get(key, key))
    return tensor.dtype if tensor else None


_NORM_GAMMA_INPUT = {"SimplifiedLayerNormalization": 1, "LayerNormalization": 1, "RMSNormalization": 1,
                     "SkipSimplifiedLayerNormalization": 2, "SkipLayerNormalization": 2}


def text_hidden_size(decoder: Any) -> int | None:
    """H from the decoder graph: the width of the final norm's weight (the last norm before the logits)."""
    producers = {out: node for node in decoder.graph.node for out in node.output}
    shapes = {init.name: tuple(init.dims) for init in decoder.graph.initializer}
    start = [o.name for o in decoder.graph.output if "logits" in o.name] or [decoder.graph.output[0].name]
    queue, seen = list(start), set()
    while queue:  # breadth-first towards the inputs: the first norm met is the final one
        name = queue.pop(0)
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        index = _NORM_GAMMA_INPUT.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in shapes:
            return int(shapes[node.input[index]][-1])
        queue.extend(node.input)
    return None


def _check_deepstack(graph: Graph, section: dict[str, Any], width: int, report: VerifyReport) -> None:
    hidden = text_hidden_size(graph.model)
    if hidden is None:
        report.failures.append(f"{graph.path.name}: cannot find the final norm weight before the logits to read the text hidden size H")
        return
    if width % hidden:
        report.failures.append(
            f"{GENAI_CONFIG}: decoder.hidden_size {width} is not a multiple of the text hidden size H={hidden} "
            f"(from {graph.path.name}'s final norm); expected (1 + D) * {hidden}"
        )
        return
    blocks = width // hidden - 1
    embeds = _names(section, "inputs", {"inputs_embeds": "inputs_embeds"})["inputs_embeds"]
    consumers = [node for node in graph.model.graph.node if embeds in node.input]
    if blocks == 0:
        report.passed.append(f"{graph.path.name}: H={hidden}, no DeepStack columns (D=0)")
        return
    split = next((n for n in consumers if n.op_type == "Split"), None)
    if split is None or len(split.output) != 1 + blocks:
        found = f"a Split into {len(split.output)}" if split is not None else "no Split"
        report.failures.append(
            f"{graph.path.name}: inputs_embeds width {width} = (1 + {blocks}) x {hidden} needs a Split into {1 + blocks} "
            f"blocks; found {found}"
        )
        return
    used = {name for node in graph.model.graph.node for name in node.input}
    unused = [k for k, name in enumerate(split.output) if name not in used]
    if unused:
        report.failures.append(
            f"{graph.path.name}: DeepStack block(s) {', '.join(map(str, unused))} of inputs_embeds are never used "
            "(a decoder built with deepstack=false, or a broken graph): image answers would differ from HF"
        )
        return
    report.passed.append(f"{graph.path.name}: DeepStack wide stream (1 + {blocks}) x H={hidden} = {width}, all {blocks} blocks wired")


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


# ---------------------------------------------------------------- run check (og, in a child process)


def _run_check(bundle: Path, report: VerifyReport, facts: dict[str, Any], max_new_tokens: int, timeout: float) -> None:
    cmd = [sys.executable, "-c", "from builder_qwen3vl.verify import _probe_main; _probe_main()", str(bundle.resolve()), str(max_new_tokens)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        report.failures.append(f"run: og generation did not finish in {timeout:.0f} s")
        return
    result, stage = None, "starting"
    for line in proc.stdout.splitlines():
        if line.startswith(_STAGE_TAG):
            stage = line[len(_STAGE_TAG):]
        elif line.startswith(_RESULT_TAG):
            result = json.loads(line[len(_RESULT_TAG):])
    if result is None:
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        report.failures.append(f"run: og crashed ({how}) while {stage}: {tail[0].strip()}{_fp16_cpu_hint(facts)}")
        return
    if not result["ok"]:
        error = result["error"] if len(result["error"]) <= _MAX_ERROR else result["error"][:_MAX_ERROR] + " ..."
        report.failures.append(f"run: og failed while {result['stage']}: {error}{_fp16_cpu_hint(facts)}")
        return
    report.generation = result
    for case in ("image", "text"):
        r = result[case]
        extra = f", {r['image_tokens']} image tokens" if case == "image" else ""
        report.passed.append(
            f"run ({case}): {r['prompt_tokens']} prompt tokens{extra}, generated {r['tokens']} = {r['text']!r}, logits finite"
        )


def _fp16_cpu_hint(facts: dict[str, Any]) -> str:
    if facts.get("io_dtype") == "float16" and "cpu" in facts.get("provider", []):
        return (" [an fp16 decoder on the CPU: if the error is 'Shape mismatch attempting to re-use buffer', the bundle "
                "was built without builder_qwen3vl's repeat_kv fix (docs/errors.md); rebuild it, or use -p fp32 / int4]")
    return ""


def _probe_main() -> None:
    """Child process entry: ``argv = [bundle, max_new_tokens]``; prints stage lines and one result line."""
    bundle, max_new_tokens = sys.argv[1], int(sys.argv[2])
    stage = "importing onnxruntime_genai"
    try:
        def at(name: str) -> None:
            nonlocal stage
            stage = name
            print(_STAGE_TAG + name, flush=True)

        result = _probe(bundle, max_new_tokens, at)
    except Exception as e:  # reported to the parent as data: any og failure is the answer we want
        result = {"ok": False, "stage": stage, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
    print(_RESULT_TAG + json.dumps(result), flush=True)


def _probe(bundle: str, max_new_tokens: int, at: Any) -> dict[str, Any]:
    import numpy as np

    at("importing onnxruntime_genai")
    import onnxruntime_genai as og

    at("loading the bundle with og.Model")
    model = og.Model(bundle)
    tokenizer = og.Tokenizer(model)
    processor = model.create_multimodal_processor()
    image_token = int(json.loads((Path(bundle) / GENAI_CONFIG).read_text())["model"]["image_token_id"])
    result: dict[str, Any] = {"ok": True}
    with tempfile.TemporaryDirectory() as tmp:
        image_path = _write_test_image(Path(tmp) / "verify.png")
        for case, images in (("image", [image_path]), ("text", [])):
            at(f"generating ({case})")
            result[case] = _generate(og, model, tokenizer, processor, images, max_new_tokens, image_token, np)
    return result


def _write_test_image(path: Path) -> str:
    """A deterministic colour gradient with a square: enough structure for the vision tower to see."""
    import numpy as np
    from PIL import Image

    side = TEST_IMAGE_SIDE
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side)), np.full((side, side), 96.0)], axis=-1)
    rgb[side // 4: side // 2, side // 4: side // 2] = (255, 255, 255)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path)
    return str(path)


def _generate(og: Any, model: Any, tokenizer: Any, processor: Any, images: list[str], max_new_tokens: int,
              image_token: int, np: Any) -> dict[str, Any]:
    tag = "<|vision_start|><|image_pad|><|vision_end|>" * len(images)
    messages = [{"role": "user", "content": tag + "What is in the picture?" if images else "Say hello."}]
    text = tokenizer.apply_chat_template(messages=json.dumps(messages), add_generation_prompt=True)
    inputs = processor(text, images=og.Images.open(*images) if images else None)
    input_ids = inputs["input_ids"].as_numpy()
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=input_ids.shape[-1] + max_new_tokens)
    generator = og.Generator(model, params)
    generator.set_inputs(inputs)
    tokens: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        if not tokens:
            logits = np.asarray(generator.get_output("logits"))
            if not np.isfinite(logits).all():
                raise RuntimeError(f"logits of the first step are not finite ({int((~np.isfinite(logits)).sum())} of {logits.size})")
        tokens.append(int(generator.get_next_tokens()[0]))
    image_tokens = int((input_ids == image_token).sum())
    if images:
        side = TEST_IMAGE_SIDE // 32  # 16-pixel patches merged 2 x 2
        if image_tokens != side * side:
            raise RuntimeError(f"the processor expanded the test image to {image_tokens} image tokens, expected {side * side}")
    return {"prompt_tokens": int(input_ids.shape[-1]), "image_tokens": image_tokens, "tokens": tokens,
            "text": tokenizer.decode(np.array(tokens, dtype=np.int32))}


# ---------------------------------------------------------------- byte-level comparison (reproducibility)


def bundle_differences(a: str | Path, b: str | Path) -> list[str]:
    """Every difference between two bundles, one line each, down to the first differing byte and, for
    ONNX files and their external data, the initializer or field it falls in."""
    a, b = Path(a), Path(b)
    names_a = {p.name for p in a.iterdir() if p.is_file()}
    names_b = {p.name for p in b.iterdir() if p.is_file()}
    out = [f"{n}: only in {a}" for n in sorted(names_a - names_b)] + [f"{n}: only in {b}" for n in sorted(names_b - names_a)]
    for name in sorted(names_a & names_b):
        data_a, data_b = (a / name).read_bytes(), (b / name).read_bytes()
        if data_a == data_b:
            continue
        first = next((i for i, (x, y) in enumerate(zip(data_a, data_b)) if x != y), min(len(data_a), len(data_b)))
        line = f"{name}: sizes {len(data_a)} / {len(data_b)}, first difference at byte {first}"
        out.append(line + _explain(a, b, name, first))
    return out


def _explain(a: Path, b: Path, name: str, offset: int) -> str:
    import onnx

    if name.endswith(".onnx"):
        ma, mb = (onnx.load(str(p / name), load_external_data=False) for p in (a, b))
        for attr in ("producer_name", "producer_version", "ir_version", "doc_string", "domain"):
            if getattr(ma, attr) != getattr(mb, attr):
                return f" ({attr}: {getattr(ma, attr)!r} vs {getattr(mb, attr)!r})"
        if [n.name for n in ma.graph.node] != [n.name for n in mb.graph.node]:
            return " (node names or order differ)"
        inits_a = [(i.name, tuple(i.dims)) for i in ma.graph.initializer]
        inits_b = [(i.name, tuple(i.dims)) for i in mb.graph.initializer]
        if inits_a != inits_b:
            return " (initializer names, shapes or order differ)"
        for ia, ib in zip(ma.graph.initializer, mb.graph.initializer):
            if ia.SerializeToString() != ib.SerializeToString():
                return f" (initializer '{ia.name}' differs: inline data or external-data offsets)"
        return " (graph structure or attributes differ)"
    if name.endswith(".data"):
        onnx_name = name[: -len(".data")]
        if (a / onnx_name).is_file():
            for init in onnx.load(str(a / onnx_name), load_external_data=False).graph.initializer:
                info = {e.key: e.value for e in init.external_data}
                start = int(info.get("offset", -1))
                if start <= offset < start + int(info.get("length", 0)):
                    return f" (inside initializer '{init.name}' of {onnx_name}, byte {offset - start})"
    return ""


def describe_sizes(bundle: Path) -> str:
    total = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    return f"{total / 1e6:.1f} MB in {sum(1 for p in bundle.iterdir() if p.is_file())} files"
