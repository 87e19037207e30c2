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
from .errors import InputError
from .io_spec import CHAT_TEMPLATE_FILES, OPTIONAL_TOKENIZER_FILES, TOKENIZER_FILES
from .safetensors_index import FLOAT_DTYPES, TensorInfo, read_checkpoint_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    config: Qwen3VLConfig
    raw_config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    weight_dtype: str  # "BF16", "F16" or "F32": the dtype of most float tensors
    tokenizer_files: tuple[Path, ...]
    chat_template: str | None


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


def expected_tensors(text: TextConfig, vision: VisionConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors a Qwen3-VL checkpoint must hold (HF 4.57+ naming)."""
    H, V, I = text.hidden_size, text.vocab_size, text.intermediate_size
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
            p + "mlp.gate_proj.weight": (I, H),
            p + "mlp.up_proj.weight": (I, H),
            p + "mlp.down_proj.weight": (H, I),
            p + "input_layernorm.weight": (H,),
            p + "post_attention_layernorm.weight": (H,),
        })
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


def check_tensors(folder: Path, tensors: dict[str, TensorInfo], expected: dict[str, tuple[int, ...]]) -> str:
    """Check presence, shape and dtype of every expected tensor; return the dominant float dtype."""
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
    counts: dict[str, int] = {}
    for name in expected:
        counts[tensors[name].dtype] = counts.get(tensors[name].dtype, 0) + 1
    return max(counts, key=lambda k: counts[k])


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
    weight_dtype = check_tensors(folder, tensors, expected_tensors(config.text, config.vision))

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
        weight_dtype=weight_dtype,
        tokenizer_files=tuple(present),
        chat_template=_chat_template(folder, tokenizer_config),
    )
