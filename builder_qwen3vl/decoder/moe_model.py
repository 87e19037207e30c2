"""The Qwen3-VL MoE text decoder (30B-A3B, 235B-A22B): og's Qwen3-VL decoder + DeepStack + og's MoE MLP.

og 0.18 has no Qwen3-VL MoE class, but everything it needs: attention, QK-norm and interleaved M-RoPE are
those of the dense ``Qwen3VLTextModel`` (HF's Qwen3VLMoe text attention is the dense one), the DeepStack
hooks are ``DeepStackMixin`` (model.py), and the MoE MLP is og's own machinery, reused as og's
``Qwen35MoETextModel`` (builders/qwen.py) uses it, minus the shared expert Qwen3-VL does not have:

- router: ``Qwen35MoETextModel.make_moe_router`` (MatMul by ``mlp.gate.weight`` [E, H], Reshape to
  [tokens, E]): raw logits, which the MoE/QMoE op turns into softmax -> top-k -> weights / their sum
  (``normalize_routing_weights=1``), as HF's ``Qwen3VLMoeTextTopKRouter`` does. HF renormalises the top-k
  weights whatever ``norm_topk_prob`` says (transformers 5.25 source), so the op always does too.
- experts: og's ``make_interleaved_swiglu_moe_preprocessing`` packs HF's ``gate_up_proj`` [E, 2I, H]
  into the interleaved [g0, u0, g1, u1, ...] rows of ``swiglu_fusion=1`` and quantizes per expert for
  QMoE (int4 / int8 from ``moe_quant_type``, block ``qmoe_block_size``); ``activation_type="swiglu"``
  with og's alpha 1 / beta 0 is silu(gate) * up, HF's ``act_fn(gate) * up``.
- the router weight stays in floating point at int4/int8 (og's LFM2-MoE does the same), so MatMulNBits
  rounding cannot flip an expert choice; the other MatMuls are og's MatMulNBits.
- dense layers (``mlp_only_layers``, or off ``decoder_sparse_step``): og's dense MLP at
  ``intermediate_size``. og's Model sets ``intermediate_size`` from ``moe_intermediate_size`` when the
  config has one; this class puts the dense width back (the MoE path reads ``moe_intermediate_size``).
- weights: og would load ``Qwen3VLForConditionalGeneration`` (its loader maps any ``Qwen3VL*``
  architecture to the dense class); this class loads ``Qwen3VLMoeForConditionalGeneration`` and then
  puts right the expert tensors transformers cannot orient from their shapes (moe_experts.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .model import DeepStackMixin, _OgQwen3VLTextModel
from .moe_experts import fix_ambiguous_experts, read_expert_layouts, sparse_layers

log = logging.getLogger(__name__)

# og's Qwen3.5-MoE text class, from the same og module as Qwen3VLTextModel (builders.qwen).
_OgQwen35MoETextModel = sys.modules[_OgQwen3VLTextModel.__module__].Qwen35MoETextModel


class DeepStackQwen3VLMoeTextModel(DeepStackMixin, _OgQwen3VLTextModel):  # type: ignore[misc, valid-type]
    """og's Qwen3VLTextModel with DeepStack and HF Qwen3-VL MoE's sparse MLP blocks."""

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
        self.make_interleaved_swiglu_moe_preprocessing(layer_id, moe)

    make_moe_router = _OgQwen35MoETextModel.make_moe_router

    def make_moe_subgraph(self, layer_id, moe, root_input):
        # og's Qwen35MoETextModel.make_moe_subgraph without its shared expert and GatedAdd.
        basename = f"/model/layers.{layer_id}/moe"
        op_type = self.moe_attrs["op_type"]
        names = self.make_moe_expert_names(layer_id)
        moe_name = f"{basename}/{op_type}"
        self.make_moe_op(
            moe_name,
            root_input=root_input,
            router_probs=f"{basename}/router/Reshape/output_0",
            weight1=names["gate_up_weight"],
            scales1=names["gate_up_scales"] if op_type == "QMoE" else "",
            bias1=names["gate_up_bias"],
            weight2=names["down_weight"],
            scales2=names["down_scales"] if op_type == "QMoE" else "",
            bias2=names["down_bias"],
        )
        self.layernorm_attrs["skip_input"] = f"{moe_name}/output_0"
