"""Temporary replacements for Hugging Face Qwen3-VL code paths.

``fixed_3d_text_rotary`` swaps ``Qwen3VLTextRotaryEmbedding.forward`` for a form that takes only
3D position ids ``[3, B, S]`` (temporal, height, width) and has no shape-dependent branch:
HF's own forward broadcasts 2D ids to 3D and rebuilds the interleaved layout by writing into a
view of its input, both of which hide mistakes (a 2D id tensor silently becomes "text only")
and trip graph capture. The replacement selects each rotary frequency's axis with a gather, so
the cos/sin it returns are bit-identical to HF's for the same 3D ids.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch

log = logging.getLogger(__name__)


def mrope_axis_index(mrope_section: Sequence[int], half_dim: int) -> torch.Tensor:
    """Which position axis (0 = T, 1 = H, 2 = W) drives each of the ``half_dim`` rotary frequencies.

    Qwen3-VL interleaves the axes: frequency i uses H when i % 3 == 1 and i < 3 * section[1],
    W when i % 3 == 2 and i < 3 * section[2], and T otherwise.
    """
    if len(mrope_section) != 3:
        raise ValueError(f"mrope_section: expected 3 entries (T, H, W), got {list(mrope_section)}")
    axis_F = torch.zeros(half_dim, dtype=torch.long)
    for axis in (1, 2):
        axis_F[axis : 3 * int(mrope_section[axis]) : 3] = axis
    return axis_F


def _fixed_3d_forward(self: torch.nn.Module, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[B, S, head_dim]`` for 3D position ids ``[3, B, S]``; same numbers as HF's forward."""
    if position_ids.dim() != 3 or position_ids.shape[0] != 3:
        raise ValueError(
            "Qwen3VLTextRotaryEmbedding (fixed 3D form): position_ids must have shape [3, batch, seq], "
            f"got {list(position_ids.shape)}"
        )
    with torch.no_grad():
        inv_freq_F = self.inv_freq.to(device=x.device, dtype=torch.float)
        freqs_3BSF = position_ids[..., None].float() * inv_freq_F
        axis_F = mrope_axis_index(self.mrope_section, inv_freq_F.shape[0]).to(x.device)
        index_1BSF = axis_F.view(1, 1, 1, -1).expand(1, *freqs_3BSF.shape[1:])
        freqs_BSF = torch.gather(freqs_3BSF, 0, index_1BSF)[0]
        emb_BSD = torch.cat((freqs_BSF, freqs_BSF), dim=-1)
        cos_BSD = emb_BSD.cos() * self.attention_scaling
        sin_BSD = emb_BSD.sin() * self.attention_scaling
    return cos_BSD.to(dtype=x.dtype), sin_BSD.to(dtype=x.dtype)


def _rotary_class() -> type:
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    return modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding


@contextlib.contextmanager
def fixed_3d_text_rotary() -> Iterator[None]:
    """Within the block, Qwen3-VL text rotary embeddings accept only ``[3, B, S]`` position ids.

    The original ``forward`` is restored on exit, also when the block raises.
    """
    cls = _rotary_class()
    original = cls.__dict__["forward"]
    cls.forward = _fixed_3d_forward
    log.debug("Qwen3VLTextRotaryEmbedding.forward replaced by the fixed 3D form")
    try:
        yield
    finally:
        cls.forward = original
        log.debug("Qwen3VLTextRotaryEmbedding.forward restored")
