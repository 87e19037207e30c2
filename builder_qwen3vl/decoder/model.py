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
them in front of the same og class. So do the memory hooks: the checkpoint is read a module at a time
(lazy_weights.py) instead of og's whole-model ``from_pretrained``, and at int4 each MatMul is quantized as
it is written (stream_quant.py) instead of og's whole-model ``to_nbits``; the bytes are og's.

All of these override og's own hooks; what og has no hook for is in og_adapter.py.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import tempfile
from pathlib import Path
from typing import Any

from . import stream_quant
from .lazy_weights import CheckpointParams, LazyUnsupported, LazyWeights, hf_skeleton, lazy_unsupported
from ..og_options import og_builder
from .progress import LayerProgress, reporting_writes
from .spill import quantizes_from_files, spill_to_disk

log = logging.getLogger(__name__)

# extra_options keys read by this class only (og ignores keys it does not know).
APPLY_DEEPSTACK = "_apply_deepstack"  # False: the negative control of the parity tests (adds left out)
SPILL_BEFORE_QUANTIZING = "_spill_before_quantizing"  # og's to_nbits, reading a float copy on disk (spill_to_disk)
LAZY_WEIGHTS = "_lazy_weights"  # False: og's own loader and to_nbits, as og builds (the comparison of the tests)
KEPT_BYTES_WARNING = 256 << 20

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
        self.lazy_weights_requested = bool(extra_options.get(LAZY_WEIGHTS, True))
        self.lazy: LazyWeights | None = None  # set by load_weights when the checkpoint is read lazily
        self.quantized_in_place = False
        self.layer_progress = LayerProgress(self.num_layers)

    # --- weights: read a module at a time (lazy_weights.py) ---

    def hf_model_class(self) -> type:
        """The HF class og's loader would instantiate (og maps every Qwen3VL* model type to the dense one)."""
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    def oriented_params(self, folder: Path, skeleton: Any) -> dict[str, bool]:
        """Parameters whose stored orientation this class decides (True: axes 1 and 2 swapped); see moe_model.py."""
        return {}

    def og_load_weights(self, input_path):
        return super().load_weights(input_path)

    def load_weights(self, input_path):
        if not self.lazy_weights_requested:
            return self.og_load_weights(input_path)
        reason = lazy_unsupported(self, input_path)
        if reason is None:
            try:
                return self._lazy_skeleton(Path(self.model_name_or_path))
            except LazyUnsupported as e:
                reason = str(e)
        log.warning("decoder: og's loader reads the whole checkpoint into memory (%s): memory grows with the model", reason)
        return self.og_load_weights(input_path)

    def _lazy_skeleton(self, folder: Path) -> Any:
        skeleton = hf_skeleton(self.hf_model_class(), folder)
        params = CheckpointParams(folder, skeleton, self.oriented_params(folder, skeleton))
        text = [name for name in params.params if name.startswith(("model.language_model.layers.", "model.language_model.norm.", "lm_head."))]
        params.check(text)
        self.lazy = LazyWeights(skeleton, params)
        log.info("decoder: reading %d checkpoint tensors one module at a time (%s)", len(text), folder)
        return skeleton

    def _resident(self, module: Any) -> Any:
        return self.lazy.materialized(module) if self.lazy is not None else contextlib.nullcontext()

    def make_initializer(self, tensor, /, name, *, to=None, raw=False):
        super().make_initializer(tensor, name, to=to, raw=raw)
        if self.lazy is not None and self.lazy.resident:
            self.lazy.defer(self.model.graph.initializers[name], tensor, to, raw)

    def make_lm_head(self, lm_head):
        with self._resident(lm_head):
            super().make_lm_head(lm_head)

    def make_inputs_and_outputs(self):
        self.input_shapes["inputs_embeds"] = ["batch_size", "sequence_length", self.stream_width]
        super().make_inputs_and_outputs()

    def make_layer(self, layer_id, layer):
        if layer_id == 0:
            self._split_wide_stream()
        elif self.apply_deepstack and layer_id <= self.num_deepstack:
            self._add_deepstack_to_residual(layer_id)
        with self._resident(layer):
            super().make_layer(layer_id, layer)
        self.layer_progress.done(layer_id)

    def make_layernorm(self, layer_id, layernorm, skip, simple, location):
        # With D == number of layers, HF adds the last block after the last decoder layer, before the
        # final norm: the final SkipLayerNorm's root input is that residual.
        if location == "final_norm" and self.apply_deepstack and self.num_deepstack == self.num_layers:
            self._add_deepstack_to_residual(self.num_layers)
        with self._resident(layernorm) if location == "final_norm" else contextlib.nullcontext():
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

    # --- saving: initializers written one at a time; int4 quantized as written (stream_quant.py) ---

    def save_model(self, out_dir):
        nbits = stream_quant.quantizes_weights(self)
        if self.lazy is not None and nbits:
            reason = "spilling before quantizing was asked for" if self.spill_before_quantizing else stream_quant.unsupported(self)
            if reason is None:
                count = stream_quant.quantize_in_place(self)
                self.quantized_in_place = True
                log.info("decoder: %d MatMuls to MatMulNBits, each quantized as it is written", count)
            else:
                log.warning("decoder: onnxruntime's quantizer over the whole model (%s)", reason)
        if nbits and not self.quantized_in_place and (self.spill_before_quantizing or self.lazy is not None):
            if quantizes_from_files(self):
                self._save_spilled(out_dir)
                return
            if self.lazy is not None:
                log.warning("decoder: this quantizer cannot read weights from disk: the whole float model is in memory")
        if self.lazy is None:
            super().save_model(out_dir)
            return
        if self.lazy.kept_bytes > KEPT_BYTES_WARNING:
            log.warning("decoder: og computed %.2f GiB of initializers from the checkpoint that stay in memory until "
                        "saved (norms are a few MB; more means og packs weights this class does not read lazily)",
                        self.lazy.kept_bytes / (1 << 30))
        with reporting_writes(self.model.graph, self.filename + ".data", self.num_layers):
            super().save_model(out_dir)

    def _save_spilled(self, out_dir):
        with tempfile.TemporaryDirectory(prefix="float_decoder_", dir=out_dir) as scratch:
            log.info("decoder: saving a float copy of the decoder in %s for the quantizer", scratch)
            self.model = spill_to_disk(self.model, Path(scratch))
            # og's graph and value table still reference the lazy float tensors (and through them
            # the checkpoint); nothing after this point reads them.
            self.graph, self.values = self.model.graph, {}
            gc.collect()
            super().save_model(out_dir)

    def to_nbits(self):
        return self.model if self.quantized_in_place else super().to_nbits()


class DeepStackQwen3VLTextModel(DeepStackMixin, _OgQwen3VLTextModel):  # type: ignore[misc, valid-type]
    """og's Qwen3VLTextModel with a (1 + D) * H wide ``inputs_embeds`` and DeepStack adds."""
