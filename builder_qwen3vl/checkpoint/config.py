"""Typed views of a Qwen3-VL checkpoint's JSON files.

Each dataclass has a ``from_dict`` that accepts both config layouts in the wild:
transformers 4.57 (the released checkpoints: ``rope_scaling`` + ``rope_theta``, vision
``model_type: qwen3_vl``) and transformers 5.x (``rope_parameters``, vision
``model_type: qwen3_vl_vision``), for both architectures: the dense ``Qwen3VLForConditionalGeneration``
and the MoE ``Qwen3VLMoeForConditionalGeneration`` (``qwen3_vl_moe``; its text_config's MoE keys are
read by moe_config.py). Shape invariants are checked here so a bad checkpoint fails before any export starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..ground.errors import InputError
from ..ground import tokens
from ..ground.video_settings import ImageSettings
from .json_files import show
from .limits import (MAX_FACTOR, MAX_LAYERS, MAX_PATCH, MAX_PIXELS, MAX_POSITIONS, MAX_TOKEN_ID, MAX_VOCAB,
                     MAX_WIDTH)
from ..ground.vocab import QWEN3_VL_ARCHITECTURE, QWEN3_VL_MODEL_TYPE, QWEN3_VL_MOE_ARCHITECTURE, QWEN3_VL_MOE_MODEL_TYPE
from .fields import boolean, int_list, integer, label, number, section, sibling, string
from .moe_config import moe_fields

# architecture -> top-level model_type of the two accepted families
ARCHITECTURES = {QWEN3_VL_ARCHITECTURE: QWEN3_VL_MODEL_TYPE, QWEN3_VL_MOE_ARCHITECTURE: QWEN3_VL_MOE_MODEL_TYPE}
VISION_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_vision", "qwen3_vl_moe", "qwen3_vl_moe_vision")
@dataclass(frozen=True)
class RopeConfig:
    theta: float
    mrope_section: tuple[int, int, int]
    mrope_interleaved: bool

    @classmethod
    def from_text_dict(cls, d: dict[str, Any], where: str) -> RopeConfig:
        # 5.x keeps everything in rope_parameters; 4.57 splits rope_theta and rope_scaling.
        params = section(d, "rope_parameters", where, "text_config")
        scaling = section(d, "rope_scaling", where, "text_config")
        merged = {**scaling, **params}
        theta_from = merged if merged.get("rope_theta") is not None else d
        if theta_from.get("rope_theta") is None:
            raise InputError(f"{where}: no rope_theta in text_config (looked in rope_parameters and rope_theta)")
        mrope = merged.get("mrope_section")
        if not isinstance(mrope, list) or len(mrope) != 3:
            raise InputError(f"{where}: text_config needs a 3-element mrope_section, found {show(mrope)}")
        return cls(
            theta=number(theta_from, "rope_theta", where, "text_config", positive=True),
            mrope_section=int_list(mrope, "text_config mrope_section", where, lo=0, hi=MAX_WIDTH, max_len=3),  # type: ignore[arg-type]
            mrope_interleaved=boolean(merged, "mrope_interleaved", where, "text_config", default=True),
        )


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    hidden_act: str = "silu"
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    # MoE (moe_config.py); num_experts 0 is the dense model. intermediate_size is then the dense layers' width.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    norm_topk_prob: bool = True

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def sparse_layers(self) -> list[int]:
        """The layers with experts (HF's rule, owned by decoder.moe_experts); [] for the dense model."""
        from .moe_layout import sparse_layers

        return sparse_layers(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json", tie_default: bool = True,
                  moe: bool = False) -> TextConfig:
        t = "text_config"
        heads = integer(d, "num_attention_heads", where, t)
        hidden = integer(d, "hidden_size", where, t)
        layers = integer(d, "num_hidden_layers", where, t, hi=MAX_LAYERS)
        if hidden % heads:
            raise InputError(f"{where}: text_config hidden_size={hidden} is not divisible by num_attention_heads={heads}")
        cfg = cls(
            vocab_size=integer(d, "vocab_size", where, t, hi=MAX_VOCAB),
            hidden_size=hidden,
            # a MoE model whose every layer is sparse has no dense MLP to size
            intermediate_size=integer(d, "intermediate_size", where, t, lo=0 if moe else 1),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=integer(d, "num_key_value_heads", where, t, hi=heads, default=heads, none_is_default=True),
            head_dim=integer(d, "head_dim", where, t, hi=1 << 16, default=hidden // heads, none_is_default=True),
            rms_norm_eps=number(d, "rms_norm_eps", where, t, default=1e-6),
            max_position_embeddings=integer(d, "max_position_embeddings", where, t, hi=MAX_POSITIONS),
            rope=RopeConfig.from_text_dict(d, where),
            hidden_act=string(d, "hidden_act", where, t, default="silu"),
            attention_bias=boolean(d, "attention_bias", where, t, default=False),
            tie_word_embeddings=boolean(d, "tie_word_embeddings", where, t, default=tie_default),
            **(moe_fields(d, layers, where) if moe else {}),
        )
        cfg.validate(where)
        return cfg

    def validate(self, where: str) -> None:
        if self.num_attention_heads <= 0 or self.num_key_value_heads <= 0:
            raise InputError(f"{where}: text_config head counts must be positive")
        if self.num_attention_heads % self.num_key_value_heads:
            raise InputError(
                f"{where}: text_config num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"{where}: text_config hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise InputError(f"{where}: text_config head_dim={self.head_dim} must be even for rotary embeddings")
        if sum(self.rope.mrope_section) != self.head_dim // 2:
            raise InputError(
                f"{where}: text_config mrope_section {list(self.rope.mrope_section)} sums to "
                f"{sum(self.rope.mrope_section)}, expected head_dim/2 = {self.head_dim // 2}"
            )


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...]
    hidden_act: str = "gelu_pytorch_tanh"

    @property
    def patch_dim(self) -> int:
        """Width of one row of pixel_values: C * T * P * P (1536 for the released models)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def num_deepstack(self) -> int:
        return len(self.deepstack_visual_indexes)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> VisionConfig:
        model_type = d.get("model_type", "qwen3_vl_vision")
        if not isinstance(model_type, str) or model_type not in VISION_MODEL_TYPES:
            raise InputError(f"{where}: vision_config model_type is {show(model_type)}, expected one of "
                             + ", ".join(f"'{t}'" for t in VISION_MODEL_TYPES))
        v = "vision_config"
        depth = integer(d, "depth", where, v, hi=MAX_LAYERS)
        cfg = cls(
            depth=depth,
            hidden_size=integer(d, "hidden_size", where, v),
            intermediate_size=integer(d, "intermediate_size", where, v),
            num_heads=integer(d, "num_heads", where, v),
            in_channels=integer(d, "in_channels", where, v, hi=MAX_FACTOR, default=3),
            patch_size=integer(d, "patch_size", where, v, hi=MAX_PATCH, default=16),
            temporal_patch_size=integer(d, "temporal_patch_size", where, v, hi=MAX_FACTOR, default=2),
            spatial_merge_size=integer(d, "spatial_merge_size", where, v, hi=MAX_FACTOR, default=2),
            out_hidden_size=integer(d, "out_hidden_size", where, v),
            num_position_embeddings=integer(d, "num_position_embeddings", where, v, hi=MAX_POSITIONS, default=2304),
            deepstack_visual_indexes=int_list(d.get("deepstack_visual_indexes", [8, 16, 24]),
                                              "vision_config deepstack_visual_indexes", where,
                                              lo=-MAX_LAYERS, hi=MAX_LAYERS, max_len=MAX_LAYERS),
            hidden_act=string(d, "hidden_act", where, v, default="gelu_pytorch_tanh"),
        )
        cfg.validate(where)
        return cfg

    def validate(self, where: str) -> None:
        if self.num_heads <= 0 or self.hidden_size % self.num_heads:
            raise InputError(
                f"{where}: vision_config hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        side = round(self.num_position_embeddings**0.5)
        if side * side != self.num_position_embeddings:
            raise InputError(
                f"{where}: vision_config num_position_embeddings={self.num_position_embeddings} is not a square"
            )
        bad = [i for i in self.deepstack_visual_indexes if not 0 <= i < self.depth]
        if bad:
            raise InputError(f"{where}: vision_config deepstack_visual_indexes {show(bad)} outside 0..{self.depth - 1}")


@dataclass(frozen=True)
class TokenIds:
    """Special-token ids from config.json / generation_config.json; the defaults are the released vocabulary's."""

    image_token_id: int = tokens.IMAGE_TOKEN_ID
    video_token_id: int = tokens.VIDEO_TOKEN_ID
    vision_start_token_id: int = tokens.VISION_START_ID
    vision_end_token_id: int = tokens.VISION_END_ID
    bos_token_id: int | None = tokens.ENDOFTEXT_ID
    pad_token_id: int = tokens.ENDOFTEXT_ID
    eos_token_ids: tuple[int, ...] = tokens.EOS_IDS

    @classmethod
    def from_dicts(cls, config: dict[str, Any], generation: dict[str, Any] | None, where: str = "config.json",
                   generation_where: str = "generation_config.json") -> TokenIds:
        text = section(config, "text_config", where)
        gen = generation or {}
        # eos: generation_config.json's, else text_config's, else the top level's (null counts as unset)
        eos_sources = [(gen, generation_where, ""), (text, where, "text_config"), (config, where, "")]
        eos, eos_where, eos_section = next(((d["eos_token_id"], w, sec) for d, w, sec in eos_sources
                                            if d.get("eos_token_id") is not None), (tokens.IM_END_ID, where, ""))
        eos_list = eos if isinstance(eos, list) else [eos]
        if not eos_list or len(eos_list) > 1024 or any(
                isinstance(e, bool) or not isinstance(e, int) or not 0 <= e <= MAX_TOKEN_ID for e in eos_list):
            raise InputError(f"{eos_where}: {label(eos_section, 'eos_token_id')} is {show(eos)}, expected a token id or "
                             f"a non-empty list of token ids (0..{MAX_TOKEN_ID})")
        bos_d, bos_where, bos_section = (gen, generation_where, "") if "bos_token_id" in gen else (text, where, "text_config")
        bos = None if bos_d.get("bos_token_id", tokens.ENDOFTEXT_ID) is None else integer(
            bos_d, "bos_token_id", bos_where, bos_section, lo=0, hi=MAX_TOKEN_ID, default=tokens.ENDOFTEXT_ID)
        # pad must not be 0: og gives every prompt token equal to pad position 0 and mask 0.
        pad_d, pad_where, pad_section = ((gen, generation_where, "") if "pad_token_id" in gen else (text, where, "text_config"))
        pad = integer(pad_d, "pad_token_id", pad_where, pad_section, lo=0, hi=MAX_TOKEN_ID, default=tokens.ENDOFTEXT_ID,
                      none_is_default=True) or tokens.ENDOFTEXT_ID
        ids = {key: integer(config, key, where, lo=0, hi=MAX_TOKEN_ID, default=getattr(cls, key))
               for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
        return cls(**ids, bos_token_id=bos, pad_token_id=pad, eos_token_ids=tuple(eos_list))


@dataclass(frozen=True)
class GenerationDefaults:
    do_sample: bool = False
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "generation_config.json") -> GenerationDefaults:
        d = d or {}
        return cls(
            do_sample=boolean(d, "do_sample", where, default=False) if d.get("do_sample") is not None else False,
            top_k=integer(d, "top_k", where, lo=0, hi=MAX_TOKEN_ID, default=50, none_is_default=True),
            top_p=number(d, "top_p", where, default=1.0, none_is_default=True),
            temperature=number(d, "temperature", where, default=1.0, none_is_default=True),
            repetition_penalty=number(d, "repetition_penalty", where, default=1.0, none_is_default=True),
        )


def image_settings(d: dict[str, Any], where: str) -> ImageSettings:
    """preprocessor_config.json's image settings (``ImageSettings.from_hf_dict``), the keys it reads checked first;
    a null value is unset, as transformers reads it (its saves write null for unset sizes)."""
    d = {k: v for k, v in d.items() if v is not None}
    size = {k: v for k, v in section(d, "size", where).items() if v is not None}
    for key in ("shortest_edge", "longest_edge"):
        integer(size, key, where, "size", hi=MAX_PIXELS, default=1)
    for key in ("min_pixels", "max_pixels"):
        integer(d, key, where, hi=MAX_PIXELS, default=1)
    integer(d, "patch_size", where, hi=MAX_PATCH, default=1)
    for key in ("temporal_patch_size", "merge_size"):
        integer(d, key, where, hi=MAX_FACTOR, default=1)
    for key in ("image_mean", "image_std"):
        value = d.get(key, [0.5, 0.5, 0.5])
        if not (isinstance(value, list) and len(value) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)):
            raise InputError(f"{where}: {key} is {show(value)}, expected 3 numbers (one per RGB channel)")
    return ImageSettings.from_hf_dict({**d, "size": size})


@dataclass(frozen=True)
class Qwen3VLConfig:
    """Everything the builder needs to know about a checkpoint, without its weights."""

    text: TextConfig
    vision: VisionConfig
    tokens: TokenIds
    processor: ImageSettings = field(default_factory=ImageSettings)  # preprocessor_config.json
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    architecture: str = QWEN3_VL_ARCHITECTURE  # or QWEN3_VL_MOE_ARCHITECTURE (then text.is_moe)

    @property
    def num_deepstack(self) -> int:
        return self.vision.num_deepstack

    @classmethod
    def from_dict(
        cls,
        config: dict[str, Any],
        *,
        generation: dict[str, Any] | None = None,
        preprocessor: dict[str, Any] | None = None,
        where: str = "config.json",
    ) -> Qwen3VLConfig:
        architecture = architecture_of(config, where)
        if "text_config" not in config or "vision_config" not in config:
            raise InputError(f"{where}: a Qwen3-VL config needs both text_config and vision_config")
        text_dict = section(config, "text_config", where)
        text = TextConfig.from_dict(text_dict, where, tie_default=boolean(config, "tie_word_embeddings", where, default=True),
                                    moe=architecture == QWEN3_VL_MOE_ARCHITECTURE)
        vision = VisionConfig.from_dict(section(config, "vision_config", where), where)
        if vision.out_hidden_size != text.hidden_size:
            raise InputError(
                f"{where}: vision_config out_hidden_size={vision.out_hidden_size} must equal "
                f"text_config hidden_size={text.hidden_size}"
            )
        if vision.num_deepstack > text.num_hidden_layers:  # HF adds block k after text layer k, drops the rest
            raise InputError(
                f"{where}: {vision.num_deepstack} DeepStack layers need at least {vision.num_deepstack} "
                f"text layers, found num_hidden_layers={text.num_hidden_layers} (HF would silently drop the extra blocks)"
            )
        generation_where = sibling(where, "generation_config.json")
        tokens = TokenIds.from_dicts(config, generation, where, generation_where)
        if not 0 <= tokens.image_token_id < text.vocab_size:
            raise InputError(
                f"{where}: image_token_id={tokens.image_token_id} is outside the vocabulary "
                f"(text_config vocab_size={text.vocab_size})"
            )
        return cls(
            text=text,
            vision=vision,
            tokens=tokens,
            processor=image_settings(preprocessor or {}, sibling(where, "preprocessor_config.json")),
            generation=GenerationDefaults.from_dict(generation, generation_where),
            architecture=architecture,
        )


def architecture_of(config: dict[str, Any], where: str) -> str:
    """Which of the two accepted architectures config.json names (``architectures``, else ``model_type``)."""
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise InputError(f"{where}: architectures is {show(archs)}, expected a list of class names")
    model_type = config.get("model_type")
    named = [arch for arch in ARCHITECTURES if arch in archs]
    named += [arch for arch, arch_model_type in ARCHITECTURES.items() if model_type == arch_model_type]
    if named:
        return named[0]
    found = " ".join(", ".join(archs).split())[:200] if archs else f"model_type={show(model_type)}"
    raise InputError(f"{where}: not a Qwen3-VL checkpoint (found {found}; expected "
                     f"{' or '.join(ARCHITECTURES)})")
