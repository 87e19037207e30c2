"""fixed_3d_text_rotary: same cos/sin as HF for 3D ids, rejects 2D ids, always restores HF's forward."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3VLTextConfig
from transformers.models.qwen3_vl import modeling_qwen3_vl

from hf_patches import fixed_3d_text_rotary, mrope_axis_index

RotaryCls = modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding


def _rotary(mrope_section: list[int], head_dim: int) -> torch.nn.Module:
    cfg = Qwen3VLTextConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000, "mrope_section": mrope_section, "mrope_interleaved": True},
    )
    return RotaryCls(cfg)


def _position_ids_3BS(batch: int, seq: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    # Distinct T/H/W rows, large values included, so a wrong axis choice shows up.
    return torch.randint(0, 3000, (3, batch, seq), generator=gen)


@pytest.mark.parametrize(
    ("mrope_section", "head_dim"), [([6, 5, 5], 32), ([24, 20, 20], 128), ([8, 4, 4], 32)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_patched_cos_sin_identical_to_hf(mrope_section: list[int], head_dim: int, dtype: torch.dtype) -> None:
    rotary = _rotary(mrope_section, head_dim)
    ids = _position_ids_3BS(2, 7)
    x = torch.zeros(2, 7, 8, dtype=dtype)
    cos_ref, sin_ref = rotary(x, ids)
    with fixed_3d_text_rotary():
        cos, sin = rotary(x, ids)
    assert cos.shape == (2, 7, head_dim) and cos.dtype == dtype
    # Bit-identical: both select the same float32 products and apply the same cos/sin.
    assert torch.equal(cos, cos_ref) and torch.equal(sin, sin_ref)


def test_axis_index_matches_interleaved_layout() -> None:
    axis = mrope_axis_index([6, 5, 5], 16).tolist()
    assert axis == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0]


def test_2d_position_ids_raise() -> None:
    rotary = _rotary([6, 5, 5], 32)
    x = torch.zeros(1, 4, 8)
    with fixed_3d_text_rotary():
        with pytest.raises(ValueError, match=r"position_ids must have shape \[3, batch, seq\]"):
            rotary(x, torch.arange(4)[None])
        with pytest.raises(ValueError, match="position_ids"):
            rotary(x, torch.zeros(4, 1, 4, dtype=torch.long))  # HF's 4-row text+THW form is not accepted either
    # Unpatched HF broadcasts 2D ids (proves the raise above comes from the patch).
    cos, _ = rotary(x, torch.arange(4)[None])
    assert cos.shape == (1, 4, 32)


def test_original_restored_on_exit_and_on_exception() -> None:
    original = RotaryCls.__dict__["forward"]
    with fixed_3d_text_rotary():
        assert RotaryCls.__dict__["forward"] is not original
    assert RotaryCls.__dict__["forward"] is original
    with pytest.raises(RuntimeError, match="boom"):
        with fixed_3d_text_rotary():
            raise RuntimeError("boom")
    assert RotaryCls.__dict__["forward"] is original
