"""The checkpoint reader: an HF Qwen3-VL folder -> a typed ``Checkpoint``.

Only JSON and safetensors headers are read here; the exporters load weights later.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Qwen3VLConfig, TextConfig, VisionConfig
from ..errors import InputError
from ..bundle.contract import (CHAT_TEMPLATE_FILES, OPTIONAL_TOKENIZER_FILES, PROCESSOR_CONFIG_FILENAME, TOKENIZER_FILES,
                      VIDEO_CONFIG_FILENAME)
from .safetensors_index import FLOAT_DTYPES, TensorInfo, read_checkpoint_tensors
from ..runtime.video_settings import VideoSettings

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


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _optional_json(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


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
    nested = (_optional_json(folder / PROCESSOR_CONFIG_FILENAME) or {}).get("video_processor")
    sources = [(PROCESSOR_CONFIG_FILENAME, nested)] if isinstance(nested, dict) else []
    sources += [(name, doc) for name in (VIDEO_CONFIG_FILENAME, "preprocessor_config.json")
                if (doc := _optional_json(folder / name)) is not None]
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
                    "transformers' defaults do)", where, ", ".join(f"{k}={doc[k]!r}" for k in ignored))
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
    (decoder.moe_experts decides it, per layer: released [E, H, 2I] / [E, I, H] or transformers 5 [E, 2I, H] /
    [E, H, I]); without ``tensors``, the released layout. InputError (one line) for a missing or misshapen pair."""
    from ..decoder.moe_experts import RELEASED, expert_key, expert_layouts, layout_shapes

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
    H, V, I = text.hidden_size, text.vocab_size, text.intermediate_size
    sparse = set(text.sparse_layers)
    q_out, kv_out = text.num_attention_heads * text.head_dim, text.num_key_value_heads * text.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.language_model.embed_tokens.weight": (V, H),
        "model.language_model.norm.weight": (H,),
    }
    if not text.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, H)
    for i in range(text.num_hidden_layers):
        p = f"model.language_model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q_out, H),
            p + "self_attn.k_proj.weight": (kv_out, H),
            p + "self_attn.v_proj.weight": (kv_out, H),
            p + "self_attn.o_proj.weight": (H, q_out),
            p + "self_attn.q_norm.weight": (text.head_dim,),
            p + "self_attn.k_norm.weight": (text.head_dim,),
            p + "input_layernorm.weight": (H,),
            p + "post_attention_layernorm.weight": (H,),
        })
        if i not in sparse:
            shapes.update({p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                           p + "mlp.down_proj.weight": (H, I)})
    shapes.update(_expert_shapes(text, tensors, folder))
    vh, vi, m2 = vision.hidden_size, vision.intermediate_size, vision.hidden_size * vision.spatial_merge_size**2
    v = "model.visual."
    shapes.update({
        v + "patch_embed.proj.weight": (vh, vision.in_channels, vision.temporal_patch_size, vision.patch_size, vision.patch_size),
        v + "patch_embed.proj.bias": (vh,),
        v + "pos_embed.weight": (vision.num_position_embeddings, vh),
    })
    for i in range(vision.depth):
        p = f"{v}blocks.{i}."
        for norm in ("norm1", "norm2"):
            shapes[p + f"{norm}.weight"] = (vh,)
            shapes[p + f"{norm}.bias"] = (vh,)
        shapes.update({
            p + "attn.qkv.weight": (3 * vh, vh), p + "attn.qkv.bias": (3 * vh,),
            p + "attn.proj.weight": (vh, vh), p + "attn.proj.bias": (vh,),
            p + "mlp.linear_fc1.weight": (vi, vh), p + "mlp.linear_fc1.bias": (vi,),
            p + "mlp.linear_fc2.weight": (vh, vi), p + "mlp.linear_fc2.bias": (vh,),
        })
    # The final merger normalizes before the 2x2 shuffle (width vh); DeepStack mergers after it (width m2).
    mergers = {v + "merger.": vh, **{f"{v}deepstack_merger_list.{k}.": m2 for k in range(vision.num_deepstack)}}
    for p, norm_width in mergers.items():
        shapes.update({
            p + "norm.weight": (norm_width,), p + "norm.bias": (norm_width,),
            p + "linear_fc1.weight": (m2, m2), p + "linear_fc1.bias": (m2,),
            p + "linear_fc2.weight": (vision.out_hidden_size, m2), p + "linear_fc2.bias": (vision.out_hidden_size,),
        })
    return shapes


def check_tensors(folder: Path, tensors: dict[str, TensorInfo], expected: dict[str, tuple[int, ...]]) -> None:
    """Check presence, shape and dtype of every expected tensor."""
    for name, shape in expected.items():
        info = tensors.get(name)
        if info is None:
            raise InputError(f"{folder}: weights lack tensor '{name}' (expected shape {list(shape)})")
        if info.shape != shape:
            raise InputError(f"{info.file}: tensor '{name}' has shape {list(info.shape)}, expected {list(shape)}")
        if info.dtype not in FLOAT_DTYPES:
            raise InputError(f"{info.file}: tensor '{name}' has dtype {info.dtype}, expected BF16, F16 or F32")
    extra = sorted(set(tensors) - set(expected) - {"lm_head.weight"})
    if extra:
        log.warning("%s: ignoring %d unexpected tensor(s), e.g. '%s'", folder, len(extra), extra[0])


def _chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = folder / "chat_template.json"
    if as_json.is_file():
        template = read_json(as_json).get("chat_template")
        if isinstance(template, str):
            return template
    template = tokenizer_config.get("chat_template")
    return template if isinstance(template, str) else None


def read_checkpoint(folder: str | Path) -> Checkpoint:
    """Read and validate an HF Qwen3-VL checkpoint folder; raise InputError with a one-line reason."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"-i {folder}: folder not found")
    if not folder.is_dir():
        raise InputError(f"-i {folder}: expected a checkpoint folder, found a file")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{folder}: no config.json (expected an HF Qwen3-VL checkpoint folder)")
    raw = read_json(config_path)
    generation = _optional_json(folder / "generation_config.json")
    preprocessor = _optional_json(folder / "preprocessor_config.json")
    config = Qwen3VLConfig.from_dict(raw, generation=generation, preprocessor=preprocessor, where=str(config_path))

    tensors = read_checkpoint_tensors(folder)
    check_tensors(folder, tensors, expected_tensors(config.text, config.vision, tensors, folder))
    video = read_video_settings(folder, config.vision)

    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: tokenizer file {missing[0]} is missing (expected {' and '.join(TOKENIZER_FILES)})")
    tokenizer_config = read_json(folder / "tokenizer_config.json")
    read_json(folder / "tokenizer.json")  # a broken tokenizer.json should fail here, not in og at run time
    present = [folder / n for n in TOKENIZER_FILES + OPTIONAL_TOKENIZER_FILES + CHAT_TEMPLATE_FILES if (folder / n).is_file()]
    return Checkpoint(
        folder=folder,
        config=config,
        raw_config=raw,
        tensors=tensors,
        tokenizer_files=tuple(present),
        chat_template=_chat_template(folder, tokenizer_config),
        video=video,
    )
