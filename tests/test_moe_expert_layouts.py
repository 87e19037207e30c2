"""The MoE experts' two stored layouts: decided from both shapes, refused when neither fits; what transformers
loads from each and where its shape rule fails; HF's router; and the og internals the MoE class relies on."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from builder_qwen3vl.decoder import build as dec
from builder_qwen3vl.checkpoint import moe_layout
from builder_qwen3vl.checkpoint.moe_layout import RELEASED, TRANSFORMERS5, expert_layouts
from builder_qwen3vl.ground.errors import InputError
from builder_qwen3vl.checkpoint.safetensors_index import TensorInfo
from builder_qwen3vl.testing.moe_checkpoints import tiny_moe_config, write_moe_checkpoint

HIDDEN, KV_HEADS, HEAD_DIM, EXPERTS, TOP_K = 64, 2, 32, 8, 2
# --- expert layouts -----------------------------------------------------------------------------------------

def _infos(layers: list[int], gate_up: tuple, down: tuple) -> dict[str, TensorInfo]:
    out = {}
    for i in layers:
        for which, shape in (("gate_up_proj", gate_up), ("down_proj", down)):
            name = moe_layout.expert_key(i, which)
            out[name] = TensorInfo(name, "BF16", shape, Path("model.safetensors"))
    return out


@pytest.mark.parametrize(("hidden", "inter"), [(2048, 768), (64, 32), (64, 64), (64, 48)])  # 30B-A3B, H == 2I, I == H, neither
@pytest.mark.parametrize("layout", [RELEASED, TRANSFORMERS5])
def test_expert_layout_is_decided_from_both_shapes(hidden: int, inter: int, layout: str) -> None:
    shapes = moe_layout.layout_shapes(4, hidden, inter)[layout]
    assert expert_layouts(_infos([0, 2], shapes["gate_up_proj"], shapes["down_proj"]), [0, 2], 4, hidden, inter) == {0: layout, 2: layout}


def test_expert_layout_refuses_unknown_or_missing_shapes() -> None:
    with pytest.raises(InputError, match=r"layer 0 experts: gate_up_proj \[4, 64, 64\], down_proj \[4, 64, 64\] fit no known layout"):
        expert_layouts(_infos([0], (4, 64, 64), (4, 64, 64)), [0], 4, 64, 32)  # gate_up fits both, down neither
    with pytest.raises(InputError, match="expected released: gate_up_proj"):
        expert_layouts(_infos([0], (4, 64, 64), (4, 32, 64)), [0], 4, 64, 48)
    with pytest.raises(InputError, match="no tensor 'model.language_model.layers.3.mlp.experts.gate_up_proj'"):
        expert_layouts(_infos([0], (4, 64, 96), (4, 48, 64)), [0, 3], 4, 64, 48)


def test_hf_loads_both_writer_layouts_to_the_same_model(tmp_path: Path) -> None:
    """The writer's two layouts are one model to transformers when the shapes tell them apart (here I = 48, H = 64)."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    cfg = tiny_moe_config(vocab_size=256, moe_intermediate_size=48, mlp_only_layers=(1,))
    models = [Qwen3VLMoeForConditionalGeneration.from_pretrained(
        write_moe_checkpoint(tmp_path / layout, cfg, expert_layout=layout, tokenizer=False), dtype=torch.float32)
        for layout in (RELEASED, TRANSFORMERS5)]
    a, b = (m.state_dict() for m in models)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("inter", "misloaded"), [(32, "gate_up_proj"), (64, "down_proj")])
def test_hf_shape_rule_cannot_orient_square_expert_tensors(tmp_path: Path, inter: int, misloaded: str) -> None:
    """Pin: transformers' qwen3_vl_moe conversion (Transpose(1, 2, check_dims=True)) transposes a stored expert
    tensor only if its shape differs from the parameter's, so with H == 2I (gate_up_proj) or I == H (down_proj)
    it loads a released checkpoint wrong. fix_ambiguous_experts exists for this; if transformers learns to tell
    (this test fails), the fix stays correct (it reloads from the file), merely redundant."""
    from transformers import Qwen3VLMoeForConditionalGeneration
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    ops = [op for conv in get_checkpoint_conversion_mapping("qwen3_vl_moe") for op in conv.operations]
    assert [(type(op).__name__, op.dim0, op.dim1, op.check_dims) for op in ops] == [("Transpose", 1, 2, True)] * 2
    cfg = tiny_moe_config(vocab_size=256, moe_intermediate_size=inter)
    a, b = (Qwen3VLMoeForConditionalGeneration.from_pretrained(
        write_moe_checkpoint(tmp_path / layout, cfg, expert_layout=layout, tokenizer=False), dtype=torch.float32).state_dict()
        for layout in (RELEASED, TRANSFORMERS5))
    assert sorted(k for k in a if not torch.equal(a[k], b[k])) == [
        f"model.language_model.layers.{i}.mlp.experts.{misloaded}" for i in range(4)]


def test_hf_router_renormalises_whatever_norm_topk_prob_says() -> None:
    """Why the op always gets normalize_routing_weights=1: HF's router divides the top-k by their sum regardless."""
    from transformers import Qwen3VLMoeConfig
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextTopKRouter

    cfg = tiny_moe_config(vocab_size=256)
    cfg["text_config"]["norm_topk_prob"] = False
    router = Qwen3VLMoeTextTopKRouter(Qwen3VLMoeConfig.from_dict(cfg).text_config)
    torch.nn.init.normal_(router.weight)
    _, scores, _ = router(torch.randn(5, HIDDEN))
    torch.testing.assert_close(scores.sum(-1), torch.ones(5))


# --- pins: og internals the MoE class relies on ------------------------------------------------------------

def test_og_pins_moe_internals() -> None:
    og_qwen = inspect.getmodule(dec.og_builder().Qwen3VLTextModel)
    base = og_qwen.Model
    router = inspect.getsource(og_qwen.Qwen35MoETextModel.make_moe_router)
    assert "self.make_matmul(moe.gate, router_basename, root_input)" in router and 'f"{basename}/router/Reshape"' in router
    preprocessing = inspect.getsource(base.make_interleaved_swiglu_moe_preprocessing)
    assert "moe.experts.gate_up_proj" in preprocessing and "torch.stack([raw_gate_up[:, :half, :], raw_gate_up[:, half:, :]], dim=2)" in preprocessing
    # og's Model takes moe_intermediate_size as intermediate_size (the class puts the dense width back) ...
    assert "else config.moe_intermediate_size" in inspect.getsource(base.__init__)
    # ... calls make_moe for every layer of a config with experts (the class routes the dense ones to make_mlp) ...
    assert 'if self.moe_attrs["num_experts"] > 0:' in inspect.getsource(base.make_layer)
    # ... and would load any Qwen3VL* architecture with the dense class (hence the class's load_weights).
    assert '"Qwen3VL": Qwen3VLForConditionalGeneration' in inspect.getsource(base.load_weights)
    assert "exclude_from_quantization" in inspect.getsource(base.make_matmul)
