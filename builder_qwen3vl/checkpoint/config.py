"""Typed views of a Qwen3-VL checkpoint's JSON files.

Each dataclass has a ``from_dict`` that accepts both config layouts in the wild:
transformers 4.57 (the released checkpoints: ``rope_scaling`` + ``rope_theta``, vision
``model_type: qwen3_vl``) and transformers 5.x (``rope_parameters``, vision
``model_type: qwen3_vl_vision``), for both architectures: the dense ``Qwen3VLForConditionalGeneration``
and the MoE ``Qwen3VLMoeForConditionalGeneration`` (``qwen3_vl_moe``; its text_config's MoE keys are
read by moe_config.py). Shape invariants are checked here so a bad checkpoint fails before any export starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..runtime import tokens
from ..runtime.video_settings import ImageSettings
from .moe_config import QWEN3_VL_MOE_ARCHITECTURE, QWEN3_VL_MOE_MODEL_TYPE, moe_fields

QWEN3_VL_ARCHITECTURE = "Qwen3VLForConditionalGeneration"
QWEN3_VL_MODEL_TYPE = "qwen3_vl"
# architecture -> top-level model_type of the two accepted families
ARCHITECTURES = {QWEN3_VL_ARCHITECTURE: QWEN3_VL_MODEL_TYPE, QWEN3_VL_MOE_ARCHITECTURE: QWEN3_VL_MOE_MODEL_TYPE}
VISION_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_vision", "qwen3_vl_moe", "qwen3_vl_moe_vision")


def _require(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise InputError(f"{where}: missing required field '{key}'")
    return d[key]


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    mrope_section: tuple[int, int, int]
    mrope_interleaved: bool

    @classmethod
    def from_text_dict(cls, d: dict[str, Any], where: str) -> RopeConfig:
        # 5.x keeps everything in rope_parameters; 4.57 splits rope_theta and rope_scaling.
        params = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling") or {}
        merged = {**scaling, **params}
        theta = merged.get("rope_theta", d.get("rope_theta"))
        if theta is None:
            raise InputError(f"{where}: no rope_theta in text_config (looked in rope_parameters and rope_theta)")
        section = merged.get("mrope_section")
        if section is None or len(section) != 3:
            raise InputError(f"{where}: text_config needs a 3-element mrope_section, found {section!r}")
        return cls(
            theta=float(theta),
            mrope_section=tuple(int(s) for s in section),  # type: ignore[arg-type]
            mrope_interleaved=bool(merged.get("mrope_interleaved", True)),
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
        from ..decoder.moe_experts import sparse_layers

        return sparse_layers(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json", tie_default: bool = True,
                  moe: bool = False) -> TextConfig:
        heads = int(_require(d, "num_attention_heads", where))
        hidden = int(_require(d, "hidden_size", where))
        layers = int(_require(d, "num_hidden_layers", where))
        cfg = cls(
            vocab_size=int(_require(d, "vocab_size", where)),
            hidden_size=hidden,
            intermediate_size=int(_require(d, "intermediate_size", where)),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // max(heads, 1)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(_require(d, "max_position_embeddings", where)),
            rope=RopeConfig.from_text_dict(d, where),
            hidden_act=str(d.get("hidden_act", "silu")),
            attention_bias=bool(d.get("attention_bias", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", tie_default)),
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
        if model_type not in VISION_MODEL_TYPES:
            raise InputError(f"{where}: vision_config model_type is '{model_type}', expected one of "
                             + ", ".join(f"'{t}'" for t in VISION_MODEL_TYPES))
        cfg = cls(
            depth=int(_require(d, "depth", where)),
            hidden_size=int(_require(d, "hidden_size", where)),
            intermediate_size=int(_require(d, "intermediate_size", where)),
            num_heads=int(_require(d, "num_heads", where)),
            in_channels=int(d.get("in_channels", 3)),
            patch_size=int(d.get("patch_size", 16)),
            temporal_patch_size=int(d.get("temporal_patch_size", 2)),
            spatial_merge_size=int(d.get("spatial_merge_size", 2)),
            out_hidden_size=int(_require(d, "out_hidden_size", where)),
            num_position_embeddings=int(d.get("num_position_embeddings", 2304)),
            deepstack_visual_indexes=tuple(int(i) for i in d.get("deepstack_visual_indexes", (8, 16, 24))),
            hidden_act=str(d.get("hidden_act", "gelu_pytorch_tanh")),
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
            raise InputError(f"{where}: vision_config deepstack_visual_indexes {bad} outside 0..{self.depth - 1}")


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
    def from_dicts(cls, config: dict[str, Any], generation: dict[str, Any] | None) -> TokenIds:
        text = config.get("text_config") or {}
        gen = generation or {}
        eos = gen.get("eos_token_id", text.get("eos_token_id", config.get("eos_token_id", tokens.IM_END_ID)))
        eos_list = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
        bos = gen.get("bos_token_id", text.get("bos_token_id", tokens.ENDOFTEXT_ID))
        # pad must not be 0: og gives every prompt token equal to pad position 0 and mask 0.
        pad = gen.get("pad_token_id", text.get("pad_token_id")) or tokens.ENDOFTEXT_ID
        return cls(
            image_token_id=int(config.get("image_token_id", cls.image_token_id)),
            video_token_id=int(config.get("video_token_id", cls.video_token_id)),
            vision_start_token_id=int(config.get("vision_start_token_id", cls.vision_start_token_id)),
            vision_end_token_id=int(config.get("vision_end_token_id", cls.vision_end_token_id)),
            bos_token_id=None if bos is None else int(bos),
            pad_token_id=int(pad),
            eos_token_ids=eos_list,
        )


@dataclass(frozen=True)
class GenerationDefaults:
    do_sample: bool = False
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GenerationDefaults:
        d = d or {}
        return cls(
            do_sample=bool(d.get("do_sample", False)),
            top_k=int(d.get("top_k", 50)),
            top_p=float(d.get("top_p", 1.0)),
            temperature=float(d.get("temperature", 1.0)),
            repetition_penalty=float(d.get("repetition_penalty", 1.0)),
        )


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
        text_dict = config["text_config"]
        text = TextConfig.from_dict(text_dict, where, tie_default=bool(config.get("tie_word_embeddings", True)),
                                    moe=architecture == QWEN3_VL_MOE_ARCHITECTURE)
        vision = VisionConfig.from_dict(config["vision_config"], where)
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
        tokens = TokenIds.from_dicts(config, generation)
        if not 0 <= tokens.image_token_id < text.vocab_size:
            raise InputError(
                f"{where}: image_token_id={tokens.image_token_id} is outside the vocabulary "
                f"(text_config vocab_size={text.vocab_size})"
            )
        return cls(
            text=text,
            vision=vision,
            tokens=tokens,
            processor=ImageSettings.from_hf_dict(preprocessor or {}),
            generation=GenerationDefaults.from_dict(generation),
            architecture=architecture,
        )


def architecture_of(config: dict[str, Any], where: str) -> str:
    """Which of the two accepted architectures config.json names (``architectures``, else ``model_type``)."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    named = [arch for arch in ARCHITECTURES if arch in archs]
    named += [arch for arch, arch_model_type in ARCHITECTURES.items() if model_type == arch_model_type]
    if named:
        return named[0]
    found = ", ".join(archs) if archs else f"model_type={model_type!r}"
    raise InputError(f"{where}: not a Qwen3-VL checkpoint (found {found}; expected "
                     f"{' or '.join(ARCHITECTURES)})")
