"""An export-friendly Qwen3-VL vision encoder that reuses the weights of HF ``Qwen3VLVisionModel``.

HF computes everything that depends on ``grid_thw`` (position-embedding interpolation, 2D
rotary angles, ``cu_seqlens``) with ``.tolist()``, Python loops and ``repeat_interleave`` on
data-dependent lengths, so an exported graph either fails or bakes the export grid. Here those
quantities are computed per patch with tensor arithmetic from ``image_grid_thw`` inside the
graph, so one ONNX file serves every grid.

Restriction: all images of one call share one grid (the one in row 0 of ``image_grid_thw``).
onnxruntime-genai calls the vision model once per image when grids differ, so this holds for
the runtime; ``check_grid`` enforces it on the Python side and the graph fails (a Reshape whose
element count cannot match) when it is violated at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..ground.errors import InputError


def check_grid(grid_thw: Sequence[Sequence[int]] | torch.Tensor, num_patches: int, spatial_merge_size: int = 2) -> None:
    """Raise ``InputError`` unless ``grid_thw`` is a valid input for one call of the exported encoder.

    Valid means: shape [num_images, 3], every entry positive, h and w multiples of
    ``spatial_merge_size``, all rows sharing one (h, w), and sum(t*h*w) == num_patches.
    """
    rows = grid_thw.tolist() if isinstance(grid_thw, torch.Tensor) else [list(r) for r in grid_thw]
    if not rows or any(len(r) != 3 for r in rows):
        raise InputError(f"image_grid_thw: expected shape [num_images, 3] with num_images >= 1, got {rows!r}")
    for t, h, w in rows:
        if min(t, h, w) <= 0:
            raise InputError(f"image_grid_thw: every t, h, w must be positive, got {[t, h, w]}")
        if h % spatial_merge_size or w % spatial_merge_size:
            raise InputError(
                f"image_grid_thw: h and w must be multiples of spatial_merge_size={spatial_merge_size}, got {[t, h, w]}"
            )
    if any((h, w) != (rows[0][1], rows[0][2]) for _, h, w in rows):
        raise InputError(f"image_grid_thw: all images in one call must share one (h, w) grid, got {rows}")
    total = sum(t * h * w for t, h, w in rows)
    if total != num_patches:
        raise InputError(f"image_grid_thw: sum(t*h*w) = {total} but pixel_values has {num_patches} patches")


def _axis_taps(index_N: torch.Tensor, size: torch.Tensor, side: int) -> tuple[torch.Tensor, ...]:
    """Bilinear (align_corners=True) taps/weights of ``side``-long learned table for positions on an axis of ``size``.

    The arithmetic order matches transformers' ``_interpolation_axis_taps_weights`` so the
    floor() of each source coordinate is bit-identical to HF's.
    """
    index_N = index_N.to(torch.float32)
    src_N = index_N * (side - 1) / torch.clamp(size - 1, min=1)
    floor_N = torch.floor(src_N)
    frac_N = src_N - floor_N
    lo_N = floor_N.to(torch.int64).clamp(0, side - 1)
    hi_N = (floor_N.to(torch.int64) + 1).clamp(0, side - 1)
    # HF writes the weights as (1 - |distance|).clamp(min=0) with distance = frac - offset.
    w_lo_N = (1 - frac_N.abs()).clamp(min=0)
    w_hi_N = (1 - (frac_N - 1).abs()).clamp(min=0)
    return lo_N, hi_N, w_lo_N, w_hi_N


class Qwen3VLVisionExportModule(nn.Module):
    """``(pixel_values [N, C*T*P*P], image_grid_thw [I, 3]) -> (image_features [T, W], image_embeds [T, H],
    deepstack_features [D, T, H])`` with T = N/m^2 merged tokens, H = H_text, W = (1 + D) * H.

    Columns of ``image_features`` (what og forwards): the final ``merger`` output, then the D
    ``deepstack_merger_list`` outputs (taken after blocks ``deepstack_visual_indexes``), each H wide.
    ``image_embeds`` and ``deepstack_features`` are the same tensors by name, for plain onnxruntime users.
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        cfg = visual.config
        self.hidden_size: int = cfg.hidden_size
        self.num_heads: int = cfg.num_heads
        self.head_dim: int = cfg.hidden_size // cfg.num_heads
        self.merge: int = cfg.spatial_merge_size
        self.side: int = int(cfg.num_position_embeddings**0.5)
        self.deepstack_visual_indexes: list[int] = list(cfg.deepstack_visual_indexes)

        # A Conv3d whose stride equals its kernel on one patch is a matmul; a Linear exports to one
        # MatMul that the weight quantizer can also handle.
        conv = visual.patch_embed.proj
        self.patch_proj = nn.Linear(conv.weight[0].numel(), conv.out_channels, bias=True)
        with torch.no_grad():
            self.patch_proj.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
            self.patch_proj.bias.copy_(conv.bias)
        self.patch_proj.to(conv.weight.dtype)

        self.pos_embed = visual.pos_embed
        self.blocks = visual.blocks
        self.merger = visual.merger
        self.deepstack_merger_list = visual.deepstack_merger_list
        self.register_buffer("inv_freq", visual.rotary_pos_emb.inv_freq.detach().clone().float(), persistent=False)

    def _patch_rows_cols(self, num_patches: int, h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column of each patch; patches come in spatial-merge-block order, frame after frame."""
        m = self.merge
        within_N = torch.arange(num_patches, dtype=torch.int64, device=h.device) % (h * w)
        blocks_w = w // m
        in_col_N = within_N % m
        in_row_N = (within_N // m) % m
        block_col_N = (within_N // (m * m)) % blocks_w
        block_row_N = within_N // (m * m * blocks_w)
        return block_row_N * m + in_row_N, block_col_N * m + in_col_N

    def _pos_embeds(self, row_N: torch.Tensor, col_N: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Learned side x side position table resampled bilinearly to the (h, w) grid: [N, hidden]."""
        r_lo, r_hi, wr_lo, wr_hi = _axis_taps(row_N, h, self.side)
        c_lo, c_hi, wc_lo, wc_hi = _axis_taps(col_N, w, self.side)
        table = self.pos_embed.weight
        pos_ND = None
        # Sum in fp32 like HF (fp32 weights times table rows), then cast once by the caller.
        for r, wr in ((r_lo, wr_lo), (r_hi, wr_hi)):
            for c, wc in ((c_lo, wc_lo), (c_hi, wc_hi)):
                term = F.embedding(r * self.side + c, table).float() * (wr * wc)[:, None]
                pos_ND = term if pos_ND is None else pos_ND + term
        return pos_ND

    def _rotary(self, row_N: torch.Tensor, col_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [N, 1, head_dim]: angles of (row | col | row | col) frequency blocks, in fp32."""
        freq_row = row_N.float()[:, None] * self.inv_freq
        freq_col = col_N.float()[:, None] * self.inv_freq
        half = torch.cat([freq_row, freq_col], dim=-1)
        angles_NK = torch.cat([half, half], dim=-1)
        return angles_NK.cos()[:, None, :], angles_NK.sin()[:, None, :]

    @staticmethod
    def _rotate(x_NHK: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x_NHK.float()
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return (x * cos + rotated * sin).to(x_NHK.dtype)

    def _attention(
        self, attn: nn.Module, x_ND: torch.Tensor, frames: int, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        num_patches = x_ND.shape[0]
        qkv = attn.qkv(x_ND).reshape(num_patches, 3, self.num_heads, self.head_dim)
        query_NHK = self._rotate(qkv[:, 0], cos, sin)
        key_NHK = self._rotate(qkv[:, 1], cos, sin)
        value_NHK = qkv[:, 2]

        # Each frame attends only to itself (HF's cu_seqlens blocks): one batch row per frame.
        def per_frame(t_NHK: torch.Tensor) -> torch.Tensor:
            return t_NHK.reshape(frames, num_patches // frames, self.num_heads, self.head_dim).transpose(1, 2)

        out_FHSK = F.scaled_dot_product_attention(
            per_frame(query_NHK), per_frame(key_NHK), per_frame(value_NHK), scale=self.head_dim**-0.5
        )
        out_ND = out_FHSK.transpose(1, 2).reshape(num_patches, self.hidden_size)
        return attn.proj(out_ND)

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        num_patches = pixel_values.shape[0]
        h = image_grid_thw[0, 1]
        w = image_grid_thw[0, 2]
        frames = self._frames_as_int(num_patches, self._checked_frames(num_patches, image_grid_thw))

        x_ND = self.patch_proj(pixel_values.to(self.patch_proj.weight.dtype))
        row_N, col_N = self._patch_rows_cols(num_patches, h, w)
        x_ND = x_ND + self._pos_embeds(row_N, col_N, h, w).to(x_ND.dtype)
        cos, sin = self._rotary(row_N, col_N)

        deepstack = []
        for layer_num, blk in enumerate(self.blocks):
            x_ND = x_ND + self._attention(blk.attn, blk.norm1(x_ND), frames, cos, sin)
            x_ND = x_ND + blk.mlp(blk.norm2(x_ND))
            if layer_num in self.deepstack_visual_indexes:
                merger = self.deepstack_merger_list[self.deepstack_visual_indexes.index(layer_num)]
                deepstack.append(merger(x_ND))
        image_embeds_TH = self.merger(x_ND)
        if deepstack:
            deepstack_DTH = torch.stack(deepstack, dim=0)
        else:  # no DeepStack blocks: an empty [0, T, H]
            deepstack_DTH = image_embeds_TH.new_zeros((0, *image_embeds_TH.shape))
        return torch.cat([image_embeds_TH, *deepstack], dim=1), image_embeds_TH, deepstack_DTH

    @staticmethod
    def _frames_as_int(num_patches: int, frames: torch.Tensor) -> int:
        """The frame count as a (symbolic under torch.export) int for the per-frame reshape."""
        n_frames = frames.item()
        # Facts torch.export cannot derive about a data-dependent value; they are not checked in
        # the ONNX graph (torch.onnx drops them), where a wrong frame count fails the Reshape instead.
        torch._check(n_frames >= 1)
        torch._check(num_patches % n_frames == 0)
        torch._check(num_patches // n_frames != 0)
        return n_frames

    def _checked_frames(self, num_patches: int, grid: torch.Tensor) -> torch.Tensor:
        """Number of frames in the call, made unusable when the grid is invalid.

        Returning num_patches + 1 frames for a bad grid makes the per-frame Reshape in the first
        attention block fail in onnxruntime (num_patches rows cannot fill num_patches + 1 frames),
        so a bad grid errors instead of producing garbage. (0 would not do: ONNX Reshape reads 0
        as "copy this dimension".) Bad means: h or w not a multiple of the merge size, rows with different (h, w),
        or sum(t*h*w) != num_patches.
        """
        m = self.merge
        h, w = grid[:, 1], grid[:, 2]
        frames = grid[:, 0].sum()
        bad = (h % m != 0) | (w % m != 0) | (h != h[0]) | (w != w[0]) | (grid.min(dim=1).values <= 0)
        bad_any = bad.any() | ((grid[:, 0] * h * w).sum() != num_patches)
        return torch.where(bad_any, torch.full_like(frames, num_patches + 1), frames)
