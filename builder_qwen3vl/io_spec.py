"""Input/output names and dynamic axes of the three bundle models, declared once.

The exporters build their graphs from these and the genai_config writer copies the names
into genai_config.json, so a rename cannot leave the two out of step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[str | int, ...]  # symbolic names or fixed sizes; "wide" means W = (1 + D) * H


@dataclass(frozen=True)
class ModelIO:
    filename: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str) and d != "wide" and d != "patch_dim"}
            for t in self.inputs + self.outputs
        }


VISION = ModelIO(
    filename="vision_encoder.onnx",
    inputs=(
        TensorSpec("pixel_values", ("num_patches", "patch_dim")),
        TensorSpec("image_grid_thw", ("num_images", 3)),
    ),
    outputs=(TensorSpec("image_features", ("num_tokens", "wide")),),
)

EMBEDDING = ModelIO(
    filename="embeddings.onnx",
    inputs=(
        TensorSpec("input_ids", ("batch_size", "sequence_length")),
        TensorSpec("image_features", ("num_image_tokens", "wide")),
    ),
    outputs=(TensorSpec("inputs_embeds", ("batch_size", "sequence_length", "wide")),),
)

DECODER_FILENAME = "model.onnx"
PROCESSOR_CONFIG_FILENAME = "processor_config.json"


def config_names(specs: tuple[TensorSpec, ...]) -> dict[str, str]:
    """The ``inputs``/``outputs`` mapping of genai_config.json: og's key -> our tensor name (identical here)."""
    return {t.name: t.name for t in specs}
