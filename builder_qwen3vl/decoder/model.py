"""The DeepStack subclass of og's Qwen3-VL text decoder: a wide ``inputs_embeds`` and D adds.

The og builder (``onnxruntime_genai.models.builder``, class ``Qwen3VLTextModel``) builds the
decoder; ``DeepStackQwen3VLTextModel`` changes only where the hidden stream enters:

- ``inputs_embeds`` is ``[B, S, (1 + D) * H]``; a Split cuts it into the hidden stream
  (columns 0:H) and D DeepStack blocks.
- HF adds DeepStack block k to the hidden state leaving decoder layer k (k < D). In og's graph
  that sum (residual + MLP output) is formed inside the next layer's fused
  SkipSimplifiedLayerNormalization (inputs: root = residual, skip = MLP output; output 3 = the sum,
  which becomes the next residual). So block k is added to the ``root`` input of layer k+1's
  input_layernorm: both the normalized output and the residual that flows on then carry it.

Everything else (weights, attention, MRoPE, quantization) is og's own code. The class keeps og's
constructor signature, like og's own ``builders/qwen.py`` classes: D comes from the config, and the two
build-time switches travel in ``extra_options`` under private keys (og keeps its own ``_quant_config`` so).

The DeepStack hooks live in ``DeepStackMixin``, shared with the MoE decoder (moe_model.py), which puts
them in front of the same og class.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

from .og_builder import og_builder
from .spill import quantizes_from_files, spill_to_disk

# extra_options keys read by this class only (og ignores keys it does not know).
APPLY_DEEPSTACK = "_apply_deepstack"  # False: the negative control of the parity tests (adds left out)
SPILL_BEFORE_QUANTIZING = "_spill_before_quantizing"  # see spill_to_disk

# og's builder puts its own folder on sys.path and imports ``builders.qwen``; subclass that very class.
_OgQwen3VLTextModel = og_builder().Qwen3VLTextModel


class DeepStackMixin:
    """The DeepStack hooks, in front of og's Qwen3VLTextModel (or a subclass of it) in the MRO."""

    def __init__(self, config, io_dtype, onnx_dtype, ep, cache_dir, extra_options):
        super().__init__(config, io_dtype, onnx_dtype, ep, cache_dir, extra_options)
        num_deepstack = len(config.vision_config.deepstack_visual_indexes)
        if not self.exclude_embeds:
            raise ValueError("DeepStack decoder: extra option exclude_embeds must be true (the embedding is a separate model)")
        if num_deepstack == self.num_layers and self.prunes_hidden_rows():
            raise ValueError("DeepStack decoder: a DeepStack block after the last layer cannot follow og's "
                             "hidden-row pruning (paged attention)")
        self.num_deepstack = num_deepstack
        self.apply_deepstack = bool(extra_options.get(APPLY_DEEPSTACK, True))
        self.spill_before_quantizing = bool(extra_options.get(SPILL_BEFORE_QUANTIZING, False))
        self.stream_width = (1 + num_deepstack) * self.hidden_size
        self.deepstack_blocks: list[str] = []  # Split outputs 1..D, set when layer 0 is made

    def make_inputs_and_outputs(self):
        self.input_shapes["inputs_embeds"] = ["batch_size", "sequence_length", self.stream_width]
        super().make_inputs_and_outputs()

    def make_layer(self, layer_id, layer):
        if layer_id == 0:
            self._split_wide_stream()
        elif self.apply_deepstack and layer_id <= self.num_deepstack:
            self._add_deepstack_to_residual(layer_id)
        super().make_layer(layer_id, layer)

    def make_layernorm(self, layer_id, layernorm, skip, simple, location):
        # With D == number of layers, HF adds the last block after the last decoder layer, before the
        # final norm: the final SkipLayerNorm's root input is that residual.
        if location == "final_norm" and self.apply_deepstack and self.num_deepstack == self.num_layers:
            self._add_deepstack_to_residual(self.num_layers)
        super().make_layernorm(layer_id, layernorm, skip, simple, location)

    def _split_wide_stream(self) -> None:
        embeds = self.input_names["inputs_embeds"]
        if self.layernorm_attrs["root_input"] != embeds or self.layernorm_attrs["skip_input"] != embeds:
            raise RuntimeError(
                "og builder: layer 0 does not read inputs_embeds directly "
                f"(root_input={self.layernorm_attrs['root_input']!r}); the DeepStack split cannot be placed"
            )
        name = "/model/deepstack/Split"
        outputs = [f"{name}/output_{i}" for i in range(1 + self.num_deepstack)]
        self.make_split(
            name,
            [embeds],
            outputs,
            dtypes=[self.io_dtype] * len(outputs),
            shapes=[self.make_hidden_state_shape()] * len(outputs),
            axis=-1,
            num_outputs=len(outputs),
        )
        self.layernorm_attrs["root_input"] = outputs[0]
        self.layernorm_attrs["skip_input"] = outputs[0]
        self.deepstack_blocks = outputs[1:]

    def _add_deepstack_to_residual(self, layer_id: int) -> None:
        # root_input is the residual leaving layer_id - 1's attention; this layer's
        # SkipLayerNorm adds the MLP output to it, giving HF's hidden state after layer_id - 1.
        residual = self.layernorm_attrs["root_input"]
        dtype = self.values[residual].dtype  # float32 when og keeps the residual in fp32 (fp16 io)
        block = self.deepstack_blocks[layer_id - 1]
        if dtype != self.io_dtype:
            cast = f"/model/deepstack/layers.{layer_id}/Cast"
            self.make_cast(cast, block, dtype, shape=self.make_hidden_state_shape())
            block = f"{cast}/output_0"
        add = f"/model/deepstack/layers.{layer_id}/Add"
        self.make_add(add, [residual, block], dtype, shape=self.make_hidden_state_shape())
        self.layernorm_attrs["root_input"] = f"{add}/output_0"

    def save_model(self, out_dir):
        if self.spill_before_quantizing and quantizes_from_files(self):
            with tempfile.TemporaryDirectory(prefix="float_decoder_", dir=out_dir) as scratch:
                self.model = spill_to_disk(self.model, Path(scratch))
                # og's graph and value table still reference the lazy float tensors (and through them
                # the checkpoint); nothing after this point reads them.
                self.graph, self.values = self.model.graph, {}
                gc.collect()
                super().save_model(out_dir)
        else:
            super().save_model(out_dir)


class DeepStackQwen3VLTextModel(DeepStackMixin, _OgQwen3VLTextModel):  # type: ignore[misc, valid-type]
    """og's Qwen3VLTextModel with a (1 + D) * H wide ``inputs_embeds`` and DeepStack adds."""
