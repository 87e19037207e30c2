"""Input/output names and dynamic axes of the three bundle models, declared once.

The exporters build their graphs from these and the genai_config writer copies the names
into genai_config.json, so a rename cannot leave the two out of step.
"""

from __future__ import annotations

from dataclasses import dataclass

from .vocab import QWEN3_VL_MODEL_TYPE


@dataclass(frozen=True)
class TensorSpec:
    name: str
    # Symbolic names or fixed sizes. Three names are fixed per bundle: "stream_width" W = (1 + D) * H,
    # "hidden_size" H and "num_deepstack" D; the others are dynamic axes.
    dims: tuple[str | int, ...]


@dataclass(frozen=True)
class ModelIO:
    filename: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]  # what og reads (named in genai_config.json)
    extra_outputs: tuple[TensorSpec, ...] = ()  # graph outputs og does not request, for plain onnxruntime users

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        """Every graph output, og's first."""
        return [t.name for t in self.outputs + self.extra_outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        fixed = ("stream_width", "patch_dim", "hidden_size", "num_deepstack")
        return {
            t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str) and d not in fixed}
            for t in self.inputs + self.outputs + self.extra_outputs
        }


VISION = ModelIO(
    filename="vision_encoder.onnx",
    inputs=(
        TensorSpec("pixel_values", ("num_patches", "patch_dim")),
        TensorSpec("image_grid_thw", ("num_images", 3)),
    ),
    outputs=(TensorSpec("image_features", ("num_tokens", "stream_width")),),
    # The columns of image_features by name: "hidden_size" is H, "num_deepstack" is D (og PR #2513 names its
    # per-block vision outputs deepstack_features_{i}; one stacked tensor keeps this list independent of D).
    extra_outputs=(
        TensorSpec("image_embeds", ("num_tokens", "hidden_size")),
        TensorSpec("deepstack_features", ("num_deepstack", "num_tokens", "hidden_size")),
    ),
)

EMBEDDING = ModelIO(
    filename="embeddings.onnx",
    inputs=(
        TensorSpec("input_ids", ("batch_size", "sequence_length")),
        TensorSpec("image_features", ("num_image_tokens", "stream_width")),
    ),
    outputs=(TensorSpec("inputs_embeds", ("batch_size", "sequence_length", "stream_width")),),
)

DECODER_FILENAME = "model.onnx"
GENAI_CONFIG_FILENAME = "genai_config.json"
PROCESSOR_CONFIG_FILENAME = "processor_config.json"
VIDEO_CONFIG_FILENAME = "video_preprocessor_config.json"

# og 0.18's runtime: the model type its VLM pipeline accepts for Qwen3-VL (og's builder writes "qwen3vl"),
# and the names og uses for a section's inputs/outputs when genai_config.json does not give them.
OG_MODEL_TYPE = QWEN3_VL_MODEL_TYPE
OG_DEFAULT_NAMES = {
    "vision": {"inputs": {"pixel_values": "pixel_values", "image_grid_thw": "image_sizes"},
               "outputs": {"image_features": "image_features"}},
    "embedding": {"inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                  "outputs": {"inputs_embeds": "inputs_embeds"}},
    "decoder": {"inputs": {"inputs_embeds": "inputs_embeds", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"}},
}

# Tokenizer files a checkpoint has (the first two required) and the bundle copies.
TOKENIZER_JSON, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG)
OPTIONAL_TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")
CHAT_TEMPLATE_JINJA, CHAT_TEMPLATE_JSON = "chat_template.jinja", "chat_template.json"
CHAT_TEMPLATE_FILES = (CHAT_TEMPLATE_JINJA, CHAT_TEMPLATE_JSON)

_ONNX_FILES = (VISION.filename, EMBEDDING.filename, DECODER_FILENAME)
# Every file name a bundle may hold: ``--overwrite`` replaces a folder holding only these.
BUNDLE_FILE_NAMES = frozenset(
    _ONNX_FILES + tuple(f + ".data" for f in _ONNX_FILES)
    + (GENAI_CONFIG_FILENAME, PROCESSOR_CONFIG_FILENAME, VIDEO_CONFIG_FILENAME)
    + TOKENIZER_FILES + OPTIONAL_TOKENIZER_FILES + CHAT_TEMPLATE_FILES
)


def config_names(specs: tuple[TensorSpec, ...]) -> dict[str, str]:
    """The ``inputs``/``outputs`` mapping of genai_config.json: og's key -> our tensor name (identical here)."""
    return {t.name: t.name for t in specs}
