"""The checkpoint reader: an HF Qwen3-VL folder -> a typed ``Checkpoint``.

Only JSON and safetensors headers are read here; the exporters load weights later. The folder is untrusted
data: every file is read or later copied from inside it (paths.py), JSON files with a size bound and any
malformation named in one line (json_files.py), and everything the config implies is checked against the
safetensors headers before any export allocates by it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Qwen3VLConfig, TextConfig, VisionConfig
from ..ground.errors import InputError
from ..ground.contract import (CHAT_TEMPLATE_FILES, CHAT_TEMPLATE_JINJA, CHAT_TEMPLATE_JSON, OPTIONAL_TOKENIZER_FILES,
                               PROCESSOR_CONFIG_FILENAME, TOKENIZER_CONFIG, TOKENIZER_FILES, TOKENIZER_JSON,
                               VIDEO_CONFIG_FILENAME)
from .json_files import (MAX_CONFIG_BYTES, check_tokenizer_config, check_tokenizer_json, optional_json, parse_json,
                         read_json, show)
from .paths import MAX_TEXT_BYTES, inside_checkpoint, read_text, regular_file
from .safetensors_index import FLOAT_DTYPES, TensorInfo, read_checkpoint_tensors
from ..ground.video_settings import VideoSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    config: Qwen3VLConfig
    raw_config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    tokenizer_files: tuple[Path, ...]
    chat_template: str | None
    video: VideoSettings = VideoSettings()  # what HF's Qwen3VLVideoProcessor.from_pretrained(folder) would use


# Video processor settings the run time does not follow: a checkpoint that changes them is told so.
_VIDEO_KEYS_NOT_FOLLOWED = {"do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
                            "rescale_factor": 1 / 255, "resample": 3}


def read_video_settings(folder: Path, vision: VisionConfig) -> VideoSettings:
    """The video processor settings HF loads for this folder (``BaseVideoProcessor.get_video_processor_dict``
    in transformers 5.x), in its order: processor_config.json's nested "video_processor" (5.x saves),
    video_preprocessor_config.json, then preprocessor_config.json (HF falls back to the image processor's
    file: its size then sets the video budget too); with none of them, the class defaults with the vision
    tower's patch and merge sizes. One INFO line says which; InputError (one line naming the file and key) on
    nonsense or on sizes the vision tower contradicts."""
    nested = (optional_json(folder, folder / PROCESSOR_CONFIG_FILENAME) or {}).get("video_processor")
    sources = [(PROCESSOR_CONFIG_FILENAME, nested)] if isinstance(nested, dict) else []
    sources += [(name, doc) for name in (VIDEO_CONFIG_FILENAME, "preprocessor_config.json")
                if (doc := optional_json(folder, folder / name)) is not None]
    # No file to follow: the defaults, on the tower's sizes (transformers' defaults assume patch 16, merge 2).
    tower_defaults = VideoSettings(patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size,
                                   merge_size=vision.spatial_merge_size)
    if not sources:
        log.info("%s: no video processor settings (no %s, %s or preprocessor_config.json); video uses transformers' "
                 "Qwen3VLVideoProcessor class defaults", folder, VIDEO_CONFIG_FILENAME, PROCESSOR_CONFIG_FILENAME)
        return tower_defaults
    name, doc = sources[0]
    where = str(folder / name)
    try:
        settings = VideoSettings.from_dict(doc, where)
    except ValueError as e:
        if name != "preprocessor_config.json":
            raise InputError(str(e)) from None
        # The image processor's file, read for video only as HF's fallback: its own format quirks (e.g.
        # Qwen2-VL's size.min_pixels) must not stop an image build. HF would fail on a video with it.
        log.warning("%s; video uses transformers' Qwen3VLVideoProcessor class defaults instead", e)
        return tower_defaults
    log.info("video settings from %s: %s fps, %d..%d frames, %d..%d pixels per clip%s", where, settings.fps,
             settings.min_frames, settings.max_frames, settings.min_pixels, settings.max_pixels,
             f", at most {settings.max_video_tokens} tokens per frame" if settings.cap_pixels_per_frame else "")
    ignored = [k for k, v in _VIDEO_KEYS_NOT_FOLLOWED.items() if k in doc and doc[k] != v]
    if ignored:
        log.warning("%s: %s not followed (the bundle resizes, rescales and normalizes video frames as "
                    "transformers' defaults do)", where, ", ".join(f"{k}={show(doc[k])}" for k in ignored))
    for key, ours, tower in (("patch_size", settings.patch_size, vision.patch_size),
                             ("temporal_patch_size", settings.temporal_patch_size, vision.temporal_patch_size),
                             ("merge_size", settings.merge_size, vision.spatial_merge_size)):
        if ours != tower:
            vkey = "spatial_merge_size" if key == "merge_size" else key
            raise InputError(f"{where}: {key} is {ours} but config.json vision_config {vkey} is {tower} "
                             "(video frames would not fit the vision tower)")
    return settings


def _expert_shapes(text: TextConfig, tensors: dict[str, TensorInfo] | None, folder: Path | str) -> dict[str, tuple[int, ...]]:
    """Router and fused experts of every sparse layer, the experts in the layout their stored shapes show
    (moe_layout decides it, per layer: released [E, H, 2I] / [E, I, H] or transformers 5 [E, 2I, H] /
    [E, H, I]); without ``tensors``, the released layout. InputError (one line) for a missing or misshapen pair."""
    from .moe_layout import RELEASED, expert_key, expert_layouts, layout_shapes

    E, H = text.num_experts, text.hidden_size
    sparse = text.sparse_layers
    layouts = {layer: RELEASED for layer in sparse}
    if tensors is not None:
        shapes = layout_shapes(E, H, text.moe_intermediate_size)
        for layer in sparse:
            for which in shapes[RELEASED]:
                name = expert_key(layer, which)
                if name not in tensors:
                    either = " or ".join(f"{list(s[which])} ({layout})" for layout, s in shapes.items())
                    raise InputError(f"{folder}: weights lack tensor '{name}' (expected shape {either}; layer {layer} "
                                     "is a sparse MoE layer)")
        try:
            layouts = expert_layouts(tensors, sparse, E, H, text.moe_intermediate_size)
        except InputError as e:
            raise InputError(f"{folder}: {e}") from None
    out: dict[str, tuple[int, ...]] = {}
    for layer, layout in layouts.items():
        out[f"model.language_model.layers.{layer}.mlp.gate.weight"] = (E, H)
        for which, shape in layout_shapes(E, H, text.moe_intermediate_size)[layout].items():
            out[expert_key(layer, which)] = shape
    return out


def expected_tensors(text: TextConfig, vision: VisionConfig, tensors: dict[str, TensorInfo] | None = None,
                     folder: Path | str = "checkpoint") -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors a Qwen3-VL checkpoint must hold (HF 4.57+ naming).

    MoE: a sparse layer holds ``mlp.gate.weight`` [E, H] (router) and the fused ``mlp.experts.gate_up_proj``
    / ``down_proj`` in the layout ``tensors`` (the safetensors headers) show; the other layers a dense MLP.
    """
    return dict(_expected(text, vision, tensors, folder))


def expected_count(text: TextConfig, vision: VisionConfig) -> int:
    """How many tensors ``expected_tensors`` lists, by arithmetic: every text layer has 8 attention and norm
    tensors and 3 MLP ones (gate, up, down or router, gate_up, down); every vision block 12."""
    text_count = 2 + (0 if text.tie_word_embeddings else 1) + 11 * text.num_hidden_layers
    return text_count + 3 + 12 * vision.depth + 6 * (1 + vision.num_deepstack)


def _expected(text: TextConfig, vision: VisionConfig, tensors: dict[str, TensorInfo] | None,
              folder: Path | str) -> Iterator[tuple[str, tuple[int, ...]]]:
    """``expected_tensors``' items, one at a time, in its order."""
    H, V, I = text.hidden_size, text.vocab_size, text.intermediate_size
    sparse = set(text.sparse_layers)
    q_out, kv_out = text.num_attention_heads * text.head_dim, text.num_key_value_heads * text.head_dim
    yield "model.language_model.embed_tokens.weight", (V, H)
    yield "model.language_model.norm.weight", (H,)
    if not text.tie_word_embeddings:
        yield "lm_head.weight", (V, H)
    for i in range(text.num_hidden_layers):
        p = f"model.language_model.layers.{i}."
        yield from {
            p + "self_attn.q_proj.weight": (q_out, H),
            p + "self_attn.k_proj.weight": (kv_out, H),
            p + "self_attn.v_proj.weight": (kv_out, H),
            p + "self_attn.o_proj.weight": (H, q_out),
            p + "self_attn.q_norm.weight": (text.head_dim,),
            p + "self_attn.k_norm.weight": (text.head_dim,),
            p + "input_layernorm.weight": (H,),
            p + "post_attention_layernorm.weight": (H,),
        }.items()
        if i not in sparse:
            yield from {p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                        p + "mlp.down_proj.weight": (H, I)}.items()
    yield from _expert_shapes(text, tensors, folder).items()
    vh, vi, m2 = vision.hidden_size, vision.intermediate_size, vision.hidden_size * vision.spatial_merge_size**2
    v = "model.visual."
    yield v + "patch_embed.proj.weight", (vh, vision.in_channels, vision.temporal_patch_size, vision.patch_size,
                                          vision.patch_size)
    yield v + "patch_embed.proj.bias", (vh,)
    yield v + "pos_embed.weight", (vision.num_position_embeddings, vh)
    for i in range(vision.depth):
        p = f"{v}blocks.{i}."
        for norm in ("norm1", "norm2"):
            yield p + f"{norm}.weight", (vh,)
            yield p + f"{norm}.bias", (vh,)
        yield from {
            p + "attn.qkv.weight": (3 * vh, vh), p + "attn.qkv.bias": (3 * vh,),
            p + "attn.proj.weight": (vh, vh), p + "attn.proj.bias": (vh,),
            p + "mlp.linear_fc1.weight": (vi, vh), p + "mlp.linear_fc1.bias": (vi,),
            p + "mlp.linear_fc2.weight": (vh, vi), p + "mlp.linear_fc2.bias": (vh,),
        }.items()
    # The final merger normalizes before the 2x2 shuffle (width vh); DeepStack mergers after it (width m2).
    mergers = {v + "merger.": vh, **{f"{v}deepstack_merger_list.{k}.": m2 for k in range(vision.num_deepstack)}}
    for p, norm_width in mergers.items():
        yield from {
            p + "norm.weight": (norm_width,), p + "norm.bias": (norm_width,),
            p + "linear_fc1.weight": (m2, m2), p + "linear_fc1.bias": (m2,),
            p + "linear_fc2.weight": (vision.out_hidden_size, m2), p + "linear_fc2.bias": (vision.out_hidden_size,),
        }.items()


def _missing(folder: Path, name: str, shape: tuple[int, ...]) -> InputError:
    return InputError(f"{folder}: weights lack tensor '{name}' (expected shape {list(shape)})")


def check_count(folder: Path, text: TextConfig, vision: VisionConfig, tensors: dict[str, TensorInfo]) -> None:
    """A config that needs more tensors than the headers list fails at its first missing tensor, found
    without listing every tensor the config implies (it may claim far more layers than the weights hold)."""
    if expected_count(text, vision) <= len(tensors):
        return
    for name, shape in _expected(text, vision, tensors, folder):
        if name not in tensors:
            raise _missing(folder, name, shape)


def check_tensors(folder: Path, tensors: dict[str, TensorInfo], expected: dict[str, tuple[int, ...]]) -> None:
    """Check presence, shape and dtype of every expected tensor."""
    for name, shape in expected.items():
        info = tensors.get(name)
        if info is None:
            raise _missing(folder, name, shape)
        if info.shape != shape:
            raise InputError(f"{info.file}: tensor '{name}' has shape {list(info.shape)}, expected {list(shape)}")
        if info.dtype not in FLOAT_DTYPES:
            raise InputError(f"{info.file}: tensor '{name}' has dtype {info.dtype}, expected BF16, F16 or F32")
    extra = sorted(set(tensors) - set(expected) - {"lm_head.weight"})
    if extra:
        log.warning("%s: ignoring %d unexpected tensor(s), e.g. %s", folder, len(extra), show(extra[0], 200))


def _chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    jinja = folder / CHAT_TEMPLATE_JINJA
    if jinja.is_file() or jinja.is_symlink():
        # universal newlines, as a text-mode read gives them
        return read_text(folder, jinja, MAX_CONFIG_BYTES).replace("\r\n", "\n").replace("\r", "\n")
    as_json = folder / CHAT_TEMPLATE_JSON
    if as_json.is_file() or as_json.is_symlink():
        template = read_json(folder, as_json).get("chat_template")
        if isinstance(template, str):
            return template
    template = tokenizer_config.get("chat_template")
    return template if isinstance(template, str) else None


def _tokenizer_files(folder: Path) -> tuple[tuple[Path, ...], dict[str, Any]]:
    """The tokenizer and chat template files the bundle copies, each checked to lie inside the folder, be a
    regular file of bounded size and, for the JSON ones, parse; and tokenizer_config.json's content."""
    missing = [name for name in TOKENIZER_FILES if not ((folder / name).is_file() or (folder / name).is_symlink())]
    if missing:
        raise InputError(f"{folder}: tokenizer file {missing[0]} is missing (expected {' and '.join(TOKENIZER_FILES)})")
    tokenizer_config = read_json(folder, folder / TOKENIZER_CONFIG)
    check_tokenizer_config(tokenizer_config, folder / TOKENIZER_CONFIG)
    # a broken tokenizer.json should fail here, not in og at run time
    tokenizer = read_json(folder, folder / TOKENIZER_JSON, MAX_TEXT_BYTES)
    check_tokenizer_json(tokenizer, folder / TOKENIZER_JSON)
    present = [folder / n for n in TOKENIZER_FILES + OPTIONAL_TOKENIZER_FILES + CHAT_TEMPLATE_FILES
               if (folder / n).is_file() or (folder / n).is_symlink()]
    for path in present:
        if path.name.endswith(".json") and path.name not in TOKENIZER_FILES:
            if not isinstance(parse_json(read_text(folder, path, MAX_TEXT_BYTES), path), dict):
                raise InputError(f"{path}: expected a JSON object")
        else:
            regular_file(folder, path, MAX_TEXT_BYTES)
    return tuple(present), tokenizer_config


# Folders of the checkpoint whose files transformers loads by name (chat templates beside the main one).
_SUBFOLDERS_READ = ("additional_chat_templates",)


def check_links(folder: Path) -> None:
    """No file of the folder (or of the subfolders transformers reads) may be a link leading outside it: og's
    builder hands the folder to transformers, which reads files by name (tokenizer.model, ...) beyond the
    ones read here."""
    for where in (folder, *(folder / name for name in _SUBFOLDERS_READ)):
        if where.is_dir():
            for entry in sorted(where.iterdir()):
                if entry.is_symlink():
                    inside_checkpoint(folder, entry)


def read_checkpoint(folder: str | Path) -> Checkpoint:
    """Read and validate an HF Qwen3-VL checkpoint folder; raise InputError with a one-line reason."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"-i {folder}: folder not found")
    if not folder.is_dir():
        raise InputError(f"-i {folder}: expected a checkpoint folder, found a file")
    config_path = folder / "config.json"
    if not (config_path.is_file() or config_path.is_symlink()):
        raise InputError(f"{folder}: no config.json (expected an HF Qwen3-VL checkpoint folder)")
    raw = read_json(folder, config_path)
    generation = optional_json(folder, folder / "generation_config.json")
    preprocessor = optional_json(folder, folder / "preprocessor_config.json")
    config = Qwen3VLConfig.from_dict(raw, generation=generation, preprocessor=preprocessor, where=str(config_path))

    tensors = read_checkpoint_tensors(folder)
    check_count(folder, config.text, config.vision, tensors)
    check_tensors(folder, tensors, expected_tensors(config.text, config.vision, tensors, folder))
    video = read_video_settings(folder, config.vision)
    tokenizer_files, tokenizer_config = _tokenizer_files(folder)
    check_links(folder)
    return Checkpoint(
        folder=folder,
        config=config,
        raw_config=raw,
        tensors=tensors,
        tokenizer_files=tokenizer_files,
        chat_template=_chat_template(folder, tokenizer_config),
        video=video,
    )
