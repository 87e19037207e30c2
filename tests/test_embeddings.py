"""embeddings.onnx vs HF: embed_tokens lookup + masked_scatter placement of the wide image rows."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from builder_qwen3vl.ground import contract
from builder_qwen3vl.embeddings.export import export_embeddings
from builder_qwen3vl.ground.tokens import IMAGE_TOKEN_ID
from quant_bounds import rtn_error_bound
from text_helpers import text_test_config

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
    embed = copy.deepcopy(hf_model.model.language_model.embed_tokens).to(dtype)  # .to() in place would leak to other tests
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
    assert [i.name for i in sess.get_inputs()] == contract.EMBEDDING.input_names()
    assert [o.name for o in sess.get_outputs()] == contract.EMBEDDING.output_names()
    ids, feats, out = sess.get_inputs()[0], sess.get_inputs()[1], sess.get_outputs()[0]
    assert ids.type == "tensor(int64)" and feats.type == "tensor(float)" and out.type == "tensor(float)"
    assert feats.shape[1] == out.shape[2] == fp32_export.stream_width == 4 * 64
    assert (fp32_export.path.parent / "embeddings.onnx.data").exists()


def test_fp32_exact_vs_hf(hf_model, fp32_export) -> None:
    ids, feats = _inputs(fp32_export.stream_width, np.float32)
    (got,) = _session(fp32_export.path).run(None, {"input_ids": ids, "image_features": feats})
    ref = _hf_wide(hf_model, ids, feats, torch.float32)
    print(f"fp32 embeddings max|diff| vs HF = {np.abs(got - ref).max():.3g}")
    np.testing.assert_array_equal(got, ref)  # a lookup and a copy: exact


def test_zero_image_rows_text_only(hf_model, fp32_export) -> None:
    """og's decode steps: image_features with 0 rows, no image token."""
    ids = np.array([[5, 17, 151643]], dtype=np.int64)
    (got,) = _session(fp32_export.path).run(None, {"input_ids": ids, "image_features": np.zeros((0, fp32_export.stream_width), np.float32)})
    table = hf_model.model.language_model.embed_tokens.weight.detach().numpy()
    assert got.shape == (1, 3, fp32_export.stream_width)
    np.testing.assert_array_equal(got[..., :64], table[ids])
    assert not got[..., 64:].any()


def test_more_image_tokens_than_rows_is_an_error(fp32_export) -> None:
    ids = np.array([[IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, 3]], dtype=np.int64)
    feats = np.ones((1, fp32_export.stream_width), np.float32)
    with pytest.raises(Exception, match="(?i)index|out of"):
        _session(fp32_export.path).run(None, {"input_ids": ids, "image_features": feats})


def test_fp16_exact_vs_fp16_table(hf_model, tmp_path: Path) -> None:
    table = hf_model.model.language_model.embed_tokens.weight
    export = export_embeddings(table, IMAGE_TOKEN_ID, DEEPSTACK, tmp_path / "embeddings.onnx", "fp16")
    assert export.io_dtype == "float16"
    sess = _session(export.path)
    assert sess.get_inputs()[1].type == "tensor(float16)" and sess.get_outputs()[0].type == "tensor(float16)"
    ids, feats = _inputs(export.stream_width, np.float16, seed=1)
    (got,) = sess.run(None, {"input_ids": ids, "image_features": feats})
    ref = _hf_wide(hf_model, ids, feats, torch.float16)
    np.testing.assert_array_equal(got, ref)


BLOCK = 32


def _int4_initializers(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {init.name: init.data_type for init in model.graph.initializer if init.name.startswith("model.embed_tokens")}


@pytest.fixture(scope="module", params=[True, False], ids=["sym", "asym"])
def int4_export(request, hf_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory):
    table = hf_model.model.language_model.embed_tokens.weight
    folder = tmp_path_factory.mktemp("emb4")
    return export_embeddings(table, IMAGE_TOKEN_ID, DEEPSTACK, folder / "embeddings.onnx", "int4", is_symmetric=request.param)


def _is_symmetric(export) -> bool:
    return "model.embed_tokens.weight_zero_points" not in _int4_initializers(export.path)


def test_int4_graph_is_onnxruntime_gather_block_quantized(int4_export) -> None:
    import onnx

    model = onnx.load(str(int4_export.path), load_external_data=False)
    nodes = {node.op_type: node for node in model.graph.node if "Gather" in node.op_type}
    assert sorted(nodes) == ["Gather", "GatherBlockQuantized"]  # the image-row Gather stays a float Gather
    assert nodes["GatherBlockQuantized"].domain == "com.microsoft"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["GatherBlockQuantized"].attribute}
    assert attrs == {"gather_axis": 0, "quantize_axis": 1, "block_size": BLOCK}
    inits = _int4_initializers(int4_export.path)
    q4 = onnx.TensorProto.INT4 if _is_symmetric(int4_export) else onnx.TensorProto.UINT4
    assert inits.pop("model.embed_tokens.weight_Q4") == q4
    assert inits.pop("model.embed_tokens.weight_scales") == onnx.TensorProto.FLOAT
    assert inits == ({} if _is_symmetric(int4_export) else {"model.embed_tokens.weight_zero_points": q4})


def test_int4_error_vs_hf_fp32_table(hf_model, int4_export) -> None:
    symmetric = _is_symmetric(int4_export)
    table = hf_model.model.language_model.embed_tokens.weight.detach().numpy()
    folder = int4_export.path.parent
    size = sum(p.stat().st_size for p in folder.iterdir())
    sess = _session(int4_export.path)
    ids, feats = _inputs(int4_export.stream_width, np.float32, seed=2)
    (got,) = sess.run(None, {"input_ids": ids, "image_features": feats})
    ref = _hf_wide(hf_model, ids, feats, torch.float32)
    text = ids != IMAGE_TOKEN_ID
    err = np.abs(got - ref)[text][:, :64]
    bound = rtn_error_bound(table[ids[text]], symmetric)
    # Our own run over 4096 random rows (text rows only, no image features: og's decode-step shape).
    rows = np.random.default_rng(3).choice(np.delete(np.arange(table.shape[0]), IMAGE_TOKEN_ID), 4096, replace=False)
    (many,) = sess.run(None, {"input_ids": rows[None], "image_features": np.zeros((0, int4_export.stream_width), np.float32)})
    many_err = many[0, :, :64].astype(np.float64) - table[rows]
    rel_rms = np.linalg.norm(many_err) / np.linalg.norm(table[rows])
    print(
        f"int4 embeddings ({'sym' if symmetric else 'asym'}, block {BLOCK}): max|diff| vs HF fp32 {err.max():.3g} "
        f"(max err / bound {(err / bound).max():.3f}); 4096 rows: max|err| {np.abs(many_err).max():.3g}, relative RMS "
        f"{rel_rms:.4f}; export's own figures over {int4_export.int4_error_rows} rows: max|err| "
        f"{int4_export.int4_max_abs_error:.3g}, relative RMS {int4_export.int4_rel_rms_error:.4f}; "
        f"files {size / 1e6:.2f} MB vs fp32 table {table.nbytes / 1e6:.2f} MB"
    )
    # Per element: the round-to-nearest bound above, + 1e-5 relative for float32 rounding of scale and product.
    assert (err <= bound * (1 + 1e-5)).all()
    assert (np.abs(many_err) <= rtn_error_bound(table[rows], symmetric) * (1 + 1e-5)).all()
    # RTN 4-bit, N(0, sigma) table, blocks of 32: 0.086 sym / 0.081 asym measured (tiny and 2B-sized tables).
    assert rel_rms < 0.1
    # The export's figures cover every row but the image token's; they must agree with ours.
    assert int4_export.int4_error_rows == table.shape[0] - 1
    assert int4_export.int4_max_abs_error >= np.abs(many_err).max()
    assert abs(int4_export.int4_rel_rms_error - rel_rms) < 0.05 * rel_rms  # 4096-row sample vs all rows
    assert size < table.nbytes / 6  # 4 bits + one float32 scale per 32 values ~ 1/6.4 of fp32
    # Image rows and DeepStack columns are copies even in int4.
    np.testing.assert_array_equal(got[~text], ref[~text])
    assert not got[text][:, 64:].any()


def test_int4_zero_image_rows_text_only(hf_model, int4_export) -> None:
    """og's decode steps with an int4 table: image_features with 0 rows."""
    ids = np.array([[5, 17, 151643]], dtype=np.int64)
    feats = np.zeros((0, int4_export.stream_width), np.float32)
    (got,) = _session(int4_export.path).run(None, {"input_ids": ids, "image_features": feats})
    table = hf_model.model.language_model.embed_tokens.weight.detach().numpy()
    assert got.shape == (1, 3, int4_export.stream_width)
    assert (np.abs(got[0, :, :64] - table[ids[0]]) <= rtn_error_bound(table[ids[0]], _is_symmetric(int4_export)) * (1 + 1e-5)).all()
    assert not got[..., 64:].any()


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_hidden_not_a_multiple_of_the_block(tmp_path: Path, symmetric: bool) -> None:
    torch.manual_seed(1)
    table = torch.randn(300, 48)  # 48 = 1.5 blocks of 32
    export = export_embeddings(table, 7, 1, tmp_path / "embeddings.onnx", "int4", is_symmetric=symmetric)
    ids = np.array([[1, 7, 299, 0]])
    feats = np.full((1, 96), 3.0, np.float32)
    (got,) = _session(export.path).run(None, {"input_ids": ids, "image_features": feats})
    assert got.shape == (1, 4, 96)
    w = table.numpy()[[1, 299, 0]]
    err = np.abs(got[0, [0, 2, 3], :48] - w)
    print(f"int4 H=48 ({'sym' if symmetric else 'asym'}): max|err| {err.max():.3g}, export's {export.int4_max_abs_error:.3g}")
    assert (err <= rtn_error_bound(w, symmetric) * (1 + 1e-5)).all()  # tolerance as in the test above
    assert err[:, 32:].max() > 0  # the partial block really is quantized, not passed through
    np.testing.assert_array_equal(got[0, 1], feats[0])
    assert not got[0, [0, 2, 3], 48:].any()
    assert export.int4_error_rows == 299


def test_int4_on_a_float16_stream(tmp_path: Path) -> None:
    torch.manual_seed(2)
    table = torch.randn(200, 64)
    export = export_embeddings(table, 3, 1, tmp_path / "embeddings.onnx", "int4", io_dtype="float16")
    sess = _session(export.path)
    assert sess.get_inputs()[1].type == "tensor(float16)" and sess.get_outputs()[0].type == "tensor(float16)"
    ids = np.array([[0, 3, 199]])
    feats = np.full((1, 128), 0.5, np.float16)
    (got,) = sess.run(None, {"input_ids": ids, "image_features": feats})
    w = table.numpy()[[0, 199]]
    err = np.abs(got[0, [0, 2], :64].astype(np.float32) - w)
    print(f"int4 on float16: max|err| vs fp32 table {err.max():.3g}")
    # The table is quantized from its float16 copy, and scales and output are float16: allow 2e-3 * |w| on top
    # of the RTN bound (float16 keeps 11 significant bits, 2^-11 = 4.9e-4, once for the table, once for the output).
    assert (err <= rtn_error_bound(w, True) * (1 + 2e-3) + 2e-3 * np.abs(w)).all()
    np.testing.assert_array_equal(got[0, 1], feats[0])


def test_bad_arguments_raise(tmp_path: Path) -> None:
    table = torch.zeros(10, 32)
    with pytest.raises(ValueError, match="precision"):
        export_embeddings(table, 3, 1, tmp_path / "e.onnx", "int8")
    with pytest.raises(ValueError, match="image_token_id"):
        export_embeddings(table, 10, 1, tmp_path / "e.onnx", "fp32")
    with pytest.raises(ValueError, match="block_size"):
        export_embeddings(table, 3, 1, tmp_path / "e.onnx", "int4", block_size=24)
