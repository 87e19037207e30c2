"""The Qwen3-VL MoE text decoder (30B-A3B, 235B-A22B): og's Qwen3-VL decoder + DeepStack + og's MoE MLP.

og 0.18 has no Qwen3-VL MoE class, but everything it needs: attention, QK-norm and interleaved M-RoPE are
those of the dense ``Qwen3VLTextModel`` (HF's Qwen3VLMoe text attention is the dense one), the DeepStack
hooks are ``DeepStackMixin`` (model.py), and the MoE MLP is og's own machinery, reused as og's
``Qwen35MoETextModel`` (builders/qwen.py) uses it, minus the shared expert Qwen3-VL does not have:

- router: ``Qwen35MoETextModel.make_moe_router`` (MatMul by ``mlp.gate.weight`` [E, H], Reshape to
  [tokens, E]), repeated by ``og_adapter.make_matmul_router`` since og has it only in a class whose
  attention is not Qwen3-VL's: raw logits, which the MoE/QMoE op turns into softmax -> top-k -> weights / their sum
  (``normalize_routing_weights=1``), as HF's ``Qwen3VLMoeTextTopKRouter`` does. HF renormalises the top-k
  weights whatever ``norm_topk_prob`` says (transformers 5.25 source), so the op always does too.
- experts: og's ``make_interleaved_swiglu_moe_preprocessing`` packs HF's ``gate_up_proj`` [E, 2I, H]
  into the interleaved [g0, u0, g1, u1, ...] rows of ``swiglu_fusion=1`` and quantizes per expert for
  QMoE (int4 / int8 from ``moe_quant_type``, block ``qmoe_block_size``); ``activation_type="swiglu"``
  with og's alpha 1 / beta 0 is silu(gate) * up, HF's ``act_fn(gate) * up``.
- on CPU the 4-bit QMoE nodes get og's MatMulNBits ``accuracy_level`` (int8 activations at og's default 4),
  which og does not write for QMoE: twice the decode speed of the experts (``_set_qmoe_accuracy_level``).
- the router weight stays in floating point at int4/int8 (og's LFM2-MoE does the same), so MatMulNBits
  rounding cannot flip an expert choice; the other MatMuls are og's MatMulNBits.
- dense layers (``mlp_only_layers``, or off ``decoder_sparse_step``): og's dense MLP at
  ``intermediate_size``. og's Model sets ``intermediate_size`` from ``moe_intermediate_size`` when the
  config has one; this class puts the dense width back (the MoE path reads ``moe_intermediate_size``).
- weights: og would load ``Qwen3VLForConditionalGeneration`` (its loader maps any ``Qwen3VL*``
  architecture to the dense class); this class reads ``Qwen3VLMoeForConditionalGeneration``'s parameters,
  with the expert tensors transformers cannot orient from their shapes put right (moe_experts.py): lazily
  (model.py, lazy_weights.py), each layer's experts read and packed by og's code when ``ir.save`` writes
  them (``ExpertTensor``; the class's ``make_initializer`` hands og's tensors to a collector meanwhile),
  or, on og's path, the whole model loaded and then fixed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .lazy_weights import lazy_tensor_base
from .model import DeepStackMixin, _OgQwen3VLTextModel
from ..checkpoint.safetensors_index import read_checkpoint_tensors
from ..checkpoint.moe_layout import DOWN, GATE_UP, expert_key, read_expert_layouts, sparse_layers
from .moe_experts import fix_ambiguous_experts
from .og_adapter import expert_count, make_matmul_router, og_initializer, router_output

log = logging.getLogger(__name__)


def expert_orientation(folder: Path, skeleton: Any, text_config: Any) -> dict[str, bool]:
    """For each sparse layer's two expert tensors, whether the stored tensor is the parameter with axes 1 and 2
    swapped: as transformers loads them (turned iff the stored shape differs from the parameter's), then put
    right where that rule cannot tell (``fix_ambiguous_experts``, which on the meta skeleton only names them)."""
    layouts = read_expert_layouts(folder, text_config)
    fixed = set(fix_ambiguous_experts(skeleton, folder, layouts))
    stored = read_checkpoint_tensors(folder)
    params = dict(skeleton.named_parameters())
    keys = [expert_key(layer, which) for layer in layouts for which in (GATE_UP, DOWN)]
    return {key: stored[key].shape != tuple(params[key].shape) or key in fixed for key in keys}


class DeepStackQwen3VLMoeTextModel(DeepStackMixin, _OgQwen3VLTextModel):  # type: ignore[misc, valid-type]
    """og's Qwen3VLTextModel with DeepStack and HF Qwen3-VL MoE's sparse MLP blocks."""

    # While not None, the tensors og's make_initializer calls make go here instead of into the graph.
    collected: list[Any] | None = None

    def __init__(self, config, io_dtype, onnx_dtype, ep, cache_dir, extra_options):
        super().__init__(config, io_dtype, onnx_dtype, ep, cache_dir, extra_options)
        text = config.text_config
        if self.moe_attrs["num_experts"] != text.num_experts or self.moe_attrs["top_k"] != text.num_experts_per_tok:
            raise RuntimeError(
                f"og builder read num_experts={self.moe_attrs['num_experts']}, top_k={self.moe_attrs['top_k']} "
                f"from the config; its text_config says {text.num_experts}, {text.num_experts_per_tok}"
            )
        self.moe_text_config = text
        self.moe_intermediate_size = text.moe_intermediate_size
        self.intermediate_size = text.intermediate_size  # the dense layers' width (og took moe_intermediate_size)
        self.sparse_layers = set(sparse_layers(text))
        # As og's Qwen35MoETextModel: fused interleaved SwiGLU experts, top-k weights renormalised in the op.
        self.moe_attrs["activation_type"] = "swiglu"
        self.moe_attrs["swiglu_fusion"] = 1
        self.moe_attrs["normalize_routing_weights"] = True
        if getattr(text, "norm_topk_prob", True) is False:
            log.warning("config says norm_topk_prob=false, but HF's Qwen3VLMoeTextTopKRouter renormalises the top-%d "
                        "routing weights regardless; the decoder follows HF", text.num_experts_per_tok)

    def load_weights(self, input_path):
        if self.quant_type is not None or str(input_path).endswith(".gguf") or "adapter_path" in self.extra_options:
            raise ValueError("Qwen3-VL MoE decoder: only unquantized Hugging Face safetensors checkpoints are supported "
                             "(no prequantized checkpoint, GGUF file or adapter)")
        return super().load_weights(input_path)

    def hf_model_class(self) -> type:
        from transformers import Qwen3VLMoeForConditionalGeneration

        return Qwen3VLMoeForConditionalGeneration

    def oriented_params(self, folder: Path, skeleton: Any) -> dict[str, bool]:
        return expert_orientation(folder, skeleton, self.moe_text_config)

    def _lazy_skeleton(self, folder: Path) -> Any:
        skeleton = super()._lazy_skeleton(folder)
        self.lazy.skip = lambda name: ".mlp.experts." in name  # read per layer by ExpertTensor, when written
        return skeleton

    def og_load_weights(self, input_path):
        from transformers import Qwen3VLMoeForConditionalGeneration

        folder = Path(self.model_name_or_path)
        layouts = read_expert_layouts(folder, self.moe_text_config)
        extra_kwargs = {"num_hidden_layers": self.num_layers} if "num_hidden_layers" in self.extra_options else {}
        model = Qwen3VLMoeForConditionalGeneration.from_pretrained(
            self.model_name_or_path, cache_dir=self.cache_dir, token=self.hf_token, trust_remote_code=self.hf_remote,
            **extra_kwargs,
        )
        fix_ambiguous_experts(model, folder, layouts)
        return model

    # --- MoE MLP (og's Model.make_layer calls make_moe for every layer when the config has experts) ---

    def get_moe_module(self, layer_id, layer):
        return layer.mlp  # og's default is layer.moe

    def make_moe(self, layer_id, moe, root_input):
        if layer_id in self.sparse_layers:
            super().make_moe(layer_id, moe, root_input)
        else:
            self.make_mlp(layer_id, moe, root_input)  # a Qwen3VLMoeTextMLP at intermediate_size

    def make_moe_preprocessing(self, layer_id, moe, root_input):
        moe.gate.exclude_from_quantization = True
        if self.lazy is None:
            self.make_interleaved_swiglu_moe_preprocessing(layer_id, moe)
        else:
            self._make_lazy_experts(layer_id, self.lazy.module_names[id(moe.experts)])

    def make_initializer(self, tensor, /, name, *, to=None, raw=False):
        if self.collected is None:
            super().make_initializer(tensor, name, to=to, raw=raw)
        else:
            self.collected.append(og_initializer(tensor, name, to=to, raw=raw))

    @contextlib.contextmanager
    def collecting_initializers(self) -> Iterator[list[Any]]:
        """The tensors og's ``make_initializer`` calls make while open, in the list yielded, not in the graph."""
        self.collected = []
        try:
            yield self.collected
        finally:
            self.collected = None

    def experts_initializers(self, layer_id: int, experts: str, first: int | None = None) -> list[Any]:
        """The tensors og's ``make_interleaved_swiglu_moe_preprocessing`` registers for this layer, in its order,
        with the experts (module name ``experts``) read from the checkpoint; ``first``: only that many experts."""
        read = self.lazy.params.read
        moe = SimpleNamespace(experts=SimpleNamespace(gate_up_proj=read(f"{experts}.gate_up_proj", first),
                                                      down_proj=read(f"{experts}.down_proj", first)))
        with self.collecting_initializers() as made, expert_count(self, first):
            self.make_interleaved_swiglu_moe_preprocessing(layer_id, moe)
        return made

    def _make_lazy_experts(self, layer_id: int, experts: str) -> None:
        """og's expert initializers of this layer, shaped and named by og's code run on the first expert and
        computed from all of them when written (``ExpertTensor``)."""
        import onnx_ir as ir

        probe = self.experts_initializers(layer_id, experts, first=1)
        num_experts = self.moe_attrs["num_experts"]
        layer = _LayerExperts(self, layer_id, experts, [t.name for t in probe])
        for tensor in probe:
            if not tensor.shape or tensor.shape[0] != 1:
                raise RuntimeError(f"og builder: MoE initializer {tensor.name} has shape {list(tensor.shape)} for one expert")
            shape = ir.Shape([num_experts, *tensor.shape[1:]])
            value = self.make_value(tensor.name, tensor.dtype, shape)
            value.const_value = ExpertTensor(layer, tensor.name, dtype=tensor.dtype, shape=shape, name=tensor.name)
            self.model.graph.register_initializer(value)

    def make_moe_router(self, layer_id, moe, root_input):
        return make_matmul_router(self, layer_id, moe.gate, root_input)

    def make_moe_subgraph(self, layer_id, moe, root_input):
        # og's Qwen35MoETextModel.make_moe_subgraph without its shared expert and GatedAdd.
        basename = f"/model/layers.{layer_id}/moe"
        op_type = self.moe_attrs["op_type"]
        names = self.make_moe_expert_names(layer_id)
        moe_name = f"{basename}/{op_type}"
        self.make_moe_op(
            moe_name,
            root_input=root_input,
            router_probs=router_output(layer_id),
            weight1=names["gate_up_weight"],
            scales1=names["gate_up_scales"] if op_type == "QMoE" else "",
            bias1=names["gate_up_bias"],
            weight2=names["down_weight"],
            scales2=names["down_scales"] if op_type == "QMoE" else "",
            bias2=names["down_bias"],
        )
        if op_type == "QMoE":
            self._set_qmoe_accuracy_level(moe_name)
        self.layernorm_attrs["skip_input"] = f"{moe_name}/output_0"

    def _set_qmoe_accuracy_level(self, name: str) -> None:
        """Give the 4-bit CPU experts the compute precision og gives the MatMulNBits beside them.

        og 0.18 writes QMoE without ``accuracy_level``, so onnxruntime's CPU kernel keeps fp32 activations for
        4-bit experts while og's MatMulNBits run with int8 activations (og's ``accuracy_level`` option, 4 on CPU).
        Measured at the 30B-A3B shape (docs/benchmarks.md): 2.1-2.5 ms per sparse layer and token without it,
        1.07 with 4, against a 0.72 ms bandwidth bound. The user's ``accuracy_level`` (og's extra option) still decides.
        """
        import onnx_ir as ir

        level = self.quant_attrs.get("accuracy_level")
        quantized_build = self.onnx_dtype in {ir.DataType.INT4, ir.DataType.UINT4}  # -p int4: MatMulNBits beside it
        if self.ep != "cpu" or not quantized_build or self.moe_attrs.get("expert_weight_bits") != 4 or not level:
            return  # a float build's int4 experts (moe_quant_type) keep fp32 activations, as its other MatMuls

        node = self.model.graph[-1]
        if node.name != name or node.op_type != "QMoE":
            raise RuntimeError(f"og builder: expected {name} (QMoE) as the last node, found {node.name} ({node.op_type})")
        node.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", int(level))


class _LayerExperts:
    """One sparse layer's expert initializers, made together by og's code when the first is written, each
    handed out once (the layer's tensors are written one after another)."""

    def __init__(self, model: DeepStackQwen3VLMoeTextModel, layer_id: int, experts: str, names: list[str]):
        self.model, self.layer_id, self.experts, self.names = model, layer_id, experts, names
        self.made: dict[str, Any] = {}

    def take(self, name: str) -> Any:
        if name not in self.made:
            tensors = self.model.experts_initializers(self.layer_id, self.experts)
            if [t.name for t in tensors] != self.names:
                raise RuntimeError(f"og builder: layer {self.layer_id} experts gave {[t.name for t in tensors]}, "
                                   f"expected {self.names}")
            self.made = {t.name: t for t in tensors}
        return self.made.pop(name)


class ExpertTensor(lazy_tensor_base()):  # type: ignore[misc]
    """A MoE / QMoE expert initializer computed by og's code from the checkpoint when it is written."""

    def __init__(self, layer: _LayerExperts, key: str, **kwargs: Any):
        self.layer, self.key = layer, key
        super().__init__(lambda: self.layer.take(self.key), **kwargs)
