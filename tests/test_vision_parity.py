"""Parity of the exported vision encoder (ONNX, onnxruntime CPU) with HF Qwen3VLVisionModel run in the same test.

Each config is exported once (module-scoped fixture) at grid [1, 4, 6]; every tested grid differs
from it and from the learned position grid, so a graph that baked the export grid fails here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

from builder_qwen3vl.ground.errors import InputError
from builder_qwen3vl.vision.export import export_vision_encoder
from builder_qwen3vl.vision.model import check_grid

logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)

EXPORT_GRID = (1, 4, 6)
GRIDS = [
    [[1, 2, 2]],
    [[1, 4, 8]],
    [[1, 8, 12]],
    [[1, 30, 40]],
    [[1, 62, 18]],
    [[3, 8, 8]],  # video: 3 frames that attend separately
    [[1, 6, 10]] * 3,  # 3 images of one grid in one call
    [[2, 6, 4], [1, 6, 4]],  # a 2-frame video and an image sharing (h, w)
]
# fp32 ONNX vs fp32 HF: same math, only summation order differs (measured <= ~5e-7).
FP32_ATOL = 1e-4


@dataclass(frozen=True)
class TinyVision:
    name: str
    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    out_hidden_size: int
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...]


CONFIGS = [
    TinyVision("d4_h64", 4, 64, 4, 128, 48, 16, (0, 1, 2)),
    TinyVision("d6_h96", 6, 96, 6, 160, 80, 36, (1, 3, 5)),
]


def _hf_vision(spec: TinyVision, seed: int) -> Qwen3VLVisionModel:
    cfg = Qwen3VLVisionConfig(
        depth=spec.depth,
        hidden_size=spec.hidden_size,
        num_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        out_hidden_size=spec.out_hidden_size,
        num_position_embeddings=spec.num_position_embeddings,
        deepstack_visual_indexes=list(spec.deepstack_visual_indexes),
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
        in_channels=3,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen3VLVisionModel(cfg).eval()
    # HF's init leaves the pos-embed table ~N(0, 0.02); make it O(1) so interpolation errors show.
    with torch.no_grad():
        model.pos_embed.weight.normal_(0.0, 1.0)
    return model


@dataclass
class Exported:
    spec: TinyVision
    hf: Qwen3VLVisionModel
    fp32: ort.InferenceSession
    fp16: ort.InferenceSession
    path_fp32: Path


@pytest.fixture(scope="module", params=CONFIGS, ids=[c.name for c in CONFIGS])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    spec: TinyVision = request.param
    hf = _hf_vision(spec, seed=len(spec.name) + spec.depth)
    out = tmp_path_factory.mktemp(spec.name)
    p32 = export_vision_encoder(hf, out / "vision_fp32.onnx", dtype="float32", example_grid=EXPORT_GRID)
    p16 = export_vision_encoder(hf, out / "vision_fp16.onnx", dtype="float16", example_grid=EXPORT_GRID)
    return Exported(spec, hf, ort.InferenceSession(p32), ort.InferenceSession(p16), p32)


def _hf_features(hf: Qwen3VLVisionModel, pixels: torch.Tensor, grid: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        out = hf(pixels, grid_thw=grid)
    return [out.pooler_output.numpy(), *(f.numpy() for f in out.deepstack_features)]


def _inputs(grid_rows: list[list[int]], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    grid = torch.tensor(grid_rows, dtype=torch.int64)
    num_patches = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum())
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_patches, 3 * 2 * 16 * 16, generator=gen), grid


def _blocks(features: np.ndarray, width: int) -> list[np.ndarray]:
    return [features[:, i : i + width] for i in range(0, features.shape[1], width)]


@pytest.mark.parametrize("grid_rows", GRIDS, ids=lambda g: f"{len(g)}x" + "-".join(map(str, g[0])))
def test_fp32_matches_hf(exported: Exported, grid_rows: list[list[int]]) -> None:
    pixels, grid = _inputs(grid_rows, seed=sum(map(sum, grid_rows)))
    check_grid(grid, pixels.shape[0])
    ref = _hf_features(exported.hf, pixels, grid)
    got = exported.fp32.run(None, {"pixel_values": pixels.numpy(), "image_grid_thw": grid.numpy()})[0]
    width = exported.spec.out_hidden_size
    assert got.shape == (pixels.shape[0] // 4, (1 + len(exported.spec.deepstack_visual_indexes)) * width)
    names = ["main", *(f"deepstack_{i}" for i in range(len(ref) - 1))]
    for name, want, have in zip(names, ref, _blocks(got, width), strict=True):
        diff = float(np.abs(have - want).max())
        print(f"{exported.spec.name} grid={grid_rows} {name}: fp32 max|diff|={diff:.2e}")
        assert diff <= FP32_ATOL, f"{name} block differs from HF by {diff}"


@pytest.mark.parametrize("grid_rows", [[[1, 8, 12]], [[3, 8, 8]], [[1, 6, 10]] * 2], ids=["1x1-8-12", "1x3-8-8", "2x1-6-10"])
def test_named_outputs_match_hf(exported: Exported, grid_rows: list[list[int]]) -> None:
    """image_embeds [T, H] and deepstack_features [D, T, H]: HF's pooler_output and deepstack_features, by name,
    and bit-equal to the columns of image_features (the same tensors before the Concat)."""
    pixels, grid = _inputs(grid_rows, seed=3)
    ref = _hf_features(exported.hf, pixels, grid)
    wide, embeds, deepstack = exported.fp32.run(
        ["image_features", "image_embeds", "deepstack_features"], {"pixel_values": pixels.numpy(), "image_grid_thw": grid.numpy()})
    depth, width = len(exported.spec.deepstack_visual_indexes), exported.spec.out_hidden_size
    assert embeds.shape == (pixels.shape[0] // 4, width) and deepstack.shape == (depth, pixels.shape[0] // 4, width)
    diffs = [float(np.abs(embeds - ref[0]).max())] + [float(np.abs(deepstack[k] - ref[1 + k]).max()) for k in range(depth)]
    print(f"{exported.spec.name} grid={grid_rows}: named outputs max|diff| vs HF {['%.2e' % d for d in diffs]}")
    assert max(diffs) <= FP32_ATOL
    np.testing.assert_array_equal(np.concatenate([embeds, *deepstack], axis=1), wide)


@pytest.mark.parametrize("grid_rows", [[[1, 8, 12]], [[3, 8, 8]]], ids=["1x1-8-12", "1x3-8-8"])
def test_fp16_matches_hf(exported: Exported, grid_rows: list[list[int]]) -> None:
    pixels, grid = _inputs(grid_rows, seed=7)
    ref = np.concatenate(_hf_features(exported.hf, pixels, grid), axis=1)
    feed = {"pixel_values": pixels.numpy().astype(np.float16), "image_grid_thw": grid.numpy()}
    got = exported.fp16.run(None, feed)[0]
    assert got.dtype == np.float16
    diff = float(np.abs(got.astype(np.float32) - ref).max())
    scale = float(np.abs(ref).max())
    print(f"{exported.spec.name} grid={grid_rows}: fp16 max|diff|={diff:.2e} (max|ref|={scale:.2f})")
    # fp16 has an 11-bit mantissa (one ulp = 9.8e-4 relative). Rounding in every block, LayerNorm and
    # merger accumulates to ~0.6 ulp of max|ref| here (measured 1.2e-4..2.1e-4 for max|ref| 0.21..0.37);
    # bound: 2 ulps of max|ref|.
    assert diff <= 2e-3 * scale


def test_graph_is_grid_independent(exported: Exported) -> None:
    model = onnx.load(str(exported.path_fp32), load_external_data=False)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    dims.update({v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output})
    assert dims["pixel_values"] == ["num_patches", 1536]
    assert dims["image_grid_thw"] == ["num_images", 3]
    width = (1 + len(exported.spec.deepstack_visual_indexes)) * exported.spec.out_hidden_size
    assert dims["image_features"] == ["num_tokens", width]
    depth = len(exported.spec.deepstack_visual_indexes)
    assert dims["image_embeds"] == ["num_tokens", exported.spec.out_hidden_size]
    assert dims["deepstack_features"] == [depth, "num_tokens", exported.spec.out_hidden_size]


BAD_GRIDS = [
    ([[1, 3, 4]], 12, "odd h"),
    ([[1, 4, 6]], 20, "t*h*w != num_patches"),
    ([[1, 4, 6], [1, 6, 4]], 48, "two grids in one call"),
    ([[1, 4, 5]], 20, "odd w"),
]


@pytest.mark.parametrize("grid_rows,num_patches,why", BAD_GRIDS, ids=[b[2] for b in BAD_GRIDS])
def test_invalid_grid_is_rejected(exported: Exported, grid_rows: list[list[int]], num_patches: int, why: str) -> None:
    grid = np.array(grid_rows, dtype=np.int64)
    with pytest.raises(InputError, match="image_grid_thw"):
        check_grid(grid.tolist(), num_patches)
    feed = {"pixel_values": np.ones((num_patches, 1536), np.float32), "image_grid_thw": grid}
    with pytest.raises(Exception, match="Reshape"):
        exported.fp32.run(None, feed)
    # HF fails too (on odd grids and count mismatches); ours must never silently return features.
    if why != "two grids in one call":
        with pytest.raises(RuntimeError):
            _hf_features(exported.hf, torch.ones(num_patches, 1536), torch.from_numpy(grid))


def test_check_grid_accepts_mixed_frames_same_hw() -> None:
    check_grid([[2, 6, 4], [1, 6, 4]], 72)


# Measured cosine on this random tiny tower: int8 MatMulNBits 0.99997 (8-bit blocks of 32); the dynamic formats
# print theirs. 0.999 is the bound for the real 2B shape and still flags a broken quantizer.
@pytest.mark.parametrize("weights, op", [("int8", "MatMulNBits"), ("qint8", "MatMulInteger"), ("quint8", "MatMulInteger")])
def test_quantized_weights_stay_close_to_hf(weights: str, op: str, tmp_path: Path) -> None:
    spec = CONFIGS[0]
    hf = _hf_vision(spec, seed=len(spec.name) + spec.depth)
    path = export_vision_encoder(hf, tmp_path / f"vision_{weights}.onnx", dtype="float32", weights=weights)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    print(f"{weights}: {ops.count(op)} {op}, {ops.count('MatMul')} float MatMul (attention scores and values)")
    assert ops.count(op) >= 4 * spec.depth  # qkv, proj, fc1, fc2 of every block at least
    pixels, grid = _inputs([[1, 8, 12]], seed=11)
    ref = np.concatenate(_hf_features(hf, pixels, grid), axis=1)
    got = ort.InferenceSession(path).run(None, {"pixel_values": pixels.numpy(), "image_grid_thw": grid.numpy()})[0]
    cosine = float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref))
    print(f"{weights} weights: max|diff|={np.abs(got - ref).max():.2e} cosine={cosine:.6f}")
    assert cosine >= 0.999
