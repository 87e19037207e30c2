"""embeddings.onnx vs HF: embed_tokens lookup + masked_scatter placement of the wide image rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from builder_qwen3vl import io_spec
from builder_qwen3vl.embeddings import (
    dequantize_4bit_blockwise,
    export_embeddings,
    quantize_4bit_blockwise,
)
from text_helpers import IMAGE_TOKEN_ID, text_test_config

DEEPSTACK = 3


@pytest.fixture(scope="module")
def hf_model() -> torch.nn.Module:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    return Qwen3VLForConditionalGeneration(Qwen3VLConfig.from_dict(text_test_config())).eval()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _inputs(width: int, dtype: type, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Batch 2; image tokens at different places per row (4 + 3 = 7 of them); wide features."""
    gen = np.random.default_rng(seed)
    ids = gen.integers(0, 151_000, size=(2, 9))
    ids[0, 2:6] = IMAGE_TOKEN_ID
    ids[1, [0, 4, 8]] = IMAGE_TOKEN_ID
    feats = gen.standard_normal((7, width)).astype(dtype)
    return ids, feats


def _hf_wide(hf_model: torch.nn.Module, ids: np.ndarray, feats: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """HF placement per column block: block 0 = embed_tokens then masked_scatter; DeepStack blocks scatter onto zeros."""
    embed = hf_model.model.language_model.embed_tokens.to(dtype)
    ids_t = torch.from_numpy(ids)
    feats_t = torch.from_numpy(feats)
    hidden = embed.weight.shape[1]
    with torch.no_grad():
        text = embed(ids_t)
        image_mask, _ = hf_model.model.get_placeholder_mask(ids_t, inputs_embeds=text, image_features=feats_t[:, :hidden])
        blocks = [text.masked_scatter(image_mask, feats_t[:, :hidden])]
        for k in range(DEEPSTACK):
            blocks.append(torch.zeros_like(text).masked_scatter(image_mask, feats_t[:, (k + 1) * hidden : (k + 2) * hidden]))
    return torch.cat(blocks, dim=-1).numpy()


@pytest.fixture(scope="module")
def fp32_export(hf_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory):
    table = hf_model.model.language_model.embed_tokens.weight
    return export_embeddings(table, IMAGE_TOKEN_ID, DEEPSTACK, tmp_path_factory.mktemp("emb32") / "embeddings.onnx", "fp32")


def test_io_names_shapes_and_dtypes(fp32_export) -> None:
    sess = _session(fp32_export.path)
    assert [i.name for i in sess.get_inputs()] == io_spec.EMBEDDING.input_names()
    assert [o.name for o in sess.get_outputs()] == io_spec.EMBEDDING.output_names()
    ids, feats, out = sess.get_inputs()[0], sess.get_inputs()[1], sess.get_outputs()[0]
    assert ids.type == "tensor(int64)" and feats.type == "tensor(float)" and out.type == "tensor(float)"
    assert feats.shape[1] == out.shape[2] == fp32_export.width == 4 * 64
    assert (fp32_export.path.parent / "embeddings.onnx.data").exists()


def test_fp32_exact_vs_hf(hf_model, fp32_export) -> None:
    ids, feats = _inputs(fp32_export.width, np.float32)
    (got,) = _session(fp32_export.path).run(None, {"input_ids": ids, "image_features": feats})
    ref = _hf_wide(hf_model, ids, feats, torch.float32)
    print(f"fp32 embeddings max|diff| vs HF = {np.abs(got - ref).max():.3g}")
    np.testing.assert_array_equal(got, ref)  # a lookup and a copy: exact


def test_zero_image_rows_text_only(hf_model, fp32_export) -> None:
    """og's decode steps: image_features with 0 rows, no image token."""
    ids = np.array([[5, 17, 151643]], dtype=np.int64)
    (got,) = _session(fp32_export.path).run(None, {"input_ids": ids, "image_features": np.zeros((0, fp32_export.width), np.float32)})
    table = hf_model.model.language_model.embed_tokens.weight.detach().numpy()
    assert got.shape == (1, 3, fp32_export.width)
    np.testing.assert_array_equal(got[..., :64], table[ids])
    assert not got[..., 64:].any()


def test_more_image_tokens_than_rows_is_an_error(fp32_export) -> None:
    ids = np.array([[IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, 3]], dtype=np.int64)
    feats = np.ones((1, fp32_export.width), np.float32)
    with pytest.raises(Exception, match="(?i)index|out of"):
        _session(fp32_export.path).run(None, {"input_ids": ids, "image_features": feats})


def test_fp16_exact_vs_fp16_table(hf_model, tmp_path: Path) -> None:
    table = hf_model.model.language_model.embed_tokens.weight
    export = export_embeddings(table, IMAGE_TOKEN_ID, DEEPSTACK, tmp_path / "embeddings.onnx", "fp16")
    assert export.io_dtype == "float16"
    sess = _session(export.path)
    assert sess.get_inputs()[1].type == "tensor(float16)" and sess.get_outputs()[0].type == "tensor(float16)"
    ids, feats = _inputs(export.width, np.float16, seed=1)
    (got,) = sess.run(None, {"input_ids": ids, "image_features": feats})
    ref = _hf_wide(hf_model, ids, feats, torch.float16)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_matches_dequantized_table_and_error_bound(hf_model, tmp_path: Path, symmetric: bool) -> None:
    table = hf_model.model.language_model.embed_tokens.weight
    export = export_embeddings(table, IMAGE_TOKEN_ID, DEEPSTACK, tmp_path / "embeddings.onnx", "int4", int4_symmetric=symmetric)
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    fp32_size = table.numel() * 4
    ids, feats = _inputs(export.width, np.float32, seed=2)
    (got,) = _session(export.path).run(None, {"input_ids": ids, "image_features": feats})
    ref = _hf_wide(hf_model, ids, feats, torch.float32)
    text = ids != IMAGE_TOKEN_ID
    err = np.abs(got - ref)[text][:, :64]
    # Round-to-nearest error is at most half a quantization step: step = block absmax / 7 (symmetric)
    # or (block max - block min) / 15 (asymmetric), taken from the HF table's own blocks.
    w = table.detach().numpy()[ids[text]].reshape(-1, 2, 32)
    step = np.abs(w).max(-1) / 7 if symmetric else (np.maximum(w.max(-1), 0) - np.minimum(w.min(-1), 0)) / 15
    bound = np.repeat(step / 2, 32, axis=-1).reshape(err.shape) * (1 + 1e-5)
    print(
        f"int4 embeddings ({'sym' if symmetric else 'asym'}, block 32): max|diff| vs HF fp32 {err.max():.3f}, "
        f"whole-table max|err| {export.int4_max_abs_error:.3f}, relative RMS err {export.int4_rel_rms_error:.4f}, "
        f"files {size / 1e6:.1f} MB vs fp32 table {fp32_size / 1e6:.1f} MB"
    )
    assert (err <= bound).all()
    assert export.int4_rel_rms_error < 0.11  # RTN 4-bit, Gaussian table, blocks of 32: 0.097 sym, 0.081 asym measured
    assert size < fp32_size / 6  # 4 bits + one float32 scale per 32 values ~ 1/6.4 of fp32
    # Image rows and DeepStack columns are copies even in int4.
    np.testing.assert_array_equal(got[~text], ref[~text])
    assert not got[text][:, 64:].any()
    # ORT's GatherBlockQuantized decodes exactly what the quantizer encoded.
    q = quantize_4bit_blockwise(table, 32, symmetric)
    np.testing.assert_allclose(got[text][:, :64], dequantize_4bit_blockwise(q)[ids[text]], rtol=0, atol=1e-6)


def test_int4_pads_hidden_to_whole_blocks(tmp_path: Path) -> None:
    torch.manual_seed(1)
    table = torch.randn(300, 48)  # 48 = 1.5 blocks of 32
    export = export_embeddings(table, 7, 1, tmp_path / "embeddings.onnx", "int4")
    ids = np.array([[1, 7, 299]])
    feats = np.full((1, 96), 3.0, np.float32)
    (got,) = _session(export.path).run(None, {"input_ids": ids, "image_features": feats})
    assert got.shape == (1, 3, 96)
    q = quantize_4bit_blockwise(table, 32, True)
    np.testing.assert_allclose(got[0, [0, 2], :48], dequantize_4bit_blockwise(q)[[1, 299]], atol=1e-6)
    np.testing.assert_array_equal(got[0, 1], feats[0])


def test_bad_arguments_raise(tmp_path: Path) -> None:
    table = torch.zeros(10, 32)
    with pytest.raises(ValueError, match="precision"):
        export_embeddings(table, 3, 1, tmp_path / "e.onnx", "int8")
    with pytest.raises(ValueError, match="image_token_id"):
        export_embeddings(table, 10, 1, tmp_path / "e.onnx", "fp32")
    with pytest.raises(ValueError, match="block_size"):
        quantize_4bit_blockwise(table, 24)
