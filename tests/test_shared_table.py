"""int4 embeddings.onnx reading a tied lm_head's MatMulNBits tensors in place (no second copy on disk).

The "decoder" here is a one-node graph whose lm_head onnxruntime's own weight-only quantizer made from
table^T, saved with external data like og's model.onnx; tests/test_end_to_end.py covers og's real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from builder_qwen3vl.embeddings.export import export_embeddings
from builder_qwen3vl.embeddings.shared_table import find_shared_int4_table
from quant_bounds import rtn_error_bound

VOCAB, HIDDEN, IMAGE_TOKEN_ID, DEEPSTACK = 600, 64, 599, 2


def _table(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((VOCAB, HIDDEN)).astype(np.float32))


def _write_decoder(folder: Path, table: torch.Tensor, *, bits: int = 4, symmetric: bool = True, block: int = 32) -> Path:
    """model.onnx + model.onnx.data holding lm_head = MatMulNBits(table^T), quantized by onnxruntime."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weight_HV = numpy_helper.from_array(np.ascontiguousarray(table.numpy().T), "lm_head.MatMul.weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["hidden", "lm_head.MatMul.weight"], ["logits"], name="/lm_head/MatMul")], "g",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, HIDDEN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, VOCAB])], [weight_HV],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=symmetric)
    quantizer.process()
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(quantizer.model.model, folder / "model.onnx", save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    return folder / "model.onnx"


def _lm_head_rows(decoder: Path, ids: np.ndarray) -> np.ndarray:
    """Rows of the dequantized lm_head, read through MatMulNBits itself: one-hot inputs would need V columns,
    so feed the identity over H and take columns ``ids`` of the [H, V] product."""
    session = ort.InferenceSession(str(decoder), providers=["CPUExecutionProvider"])
    cols = [session.run(None, {"hidden": np.eye(HIDDEN, dtype=np.float32)[h : h + 1]})[0][0] for h in range(HIDDEN)]
    return np.stack(cols)[:, ids].T  # [len(ids), H]


def test_embeddings_read_the_lm_head_in_place(tmp_path: Path) -> None:
    table = _table(0)
    decoder = _write_decoder(tmp_path, table)
    shared, why = find_shared_int4_table(decoder, VOCAB, HIDDEN)
    assert shared is not None, why
    export = export_embeddings(table, IMAGE_TOKEN_ID, DEEPSTACK, tmp_path / "embeddings.onnx", "int4",
                               shared_table=shared)

    assert not (tmp_path / "embeddings.onnx.data").exists()
    model = onnx.load(str(export.path), load_external_data=False)
    external = {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer
                if t.data_location == TensorProto.EXTERNAL}
    decoder_inits = {t.name: {e.key: e.value for e in t.external_data}
                     for t in onnx.load(str(decoder), load_external_data=False).graph.initializer}
    assert external == {"lm_head.MatMul.weight_Q4": decoder_inits["lm_head.MatMul.weight_Q4"],
                        "lm_head.MatMul.weight_scales": decoder_inits["lm_head.MatMul.weight_scales"]}

    # Text rows equal the lm_head's own dequantized rows (one table, two readers) ...
    ids = np.array([[0, 5, 77, 598, 123, 42]])
    session = ort.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input_ids": ids, "image_features": np.zeros((0, 3 * HIDDEN), np.float32)})
    # Same bytes and scales through two onnxruntime kernels: only float rounding may differ (bound 1e-6).
    np.testing.assert_allclose(out[0, :, :HIDDEN], _lm_head_rows(decoder, ids[0]), rtol=0, atol=1e-6)
    assert not out[0, :, HIDDEN:].any()
    # ... and stay within round-to-nearest of the float table (bound per element, symmetric scheme).
    ref = table.numpy()[ids[0]]
    assert (np.abs(out[0, :, :HIDDEN] - ref) <= rtn_error_bound(ref, symmetric=True) + 1e-6).all()
    # measured 0.0865 (max|err| 0.365) for N(0, 1) rows at block 32; an untied or mis-read table gives ~1.4
    assert export.int4_rel_rms_error is not None and export.int4_rel_rms_error < 0.12


def test_an_untied_lm_head_is_refused(tmp_path: Path) -> None:
    decoder = _write_decoder(tmp_path, _table(1))
    shared, why = find_shared_int4_table(decoder, VOCAB, HIDDEN)
    assert shared is not None, why
    with pytest.raises(RuntimeError, match=r"embeddings.onnx: the lm_head in model.onnx.data is not the embedding table"):
        export_embeddings(_table(0), IMAGE_TOKEN_ID, DEEPSTACK, tmp_path / "embeddings.onnx", "int4", shared_table=shared)
    assert not (tmp_path / "embeddings.onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"symmetric": False}, "zero points"),
        ({"bits": 8}, "bits=8"),
        ({"block": 128}, "block size 128 does not divide hidden size 64"),
    ],
    ids=["asymmetric", "8-bit", "block-larger-than-hidden"],
)
def test_layouts_that_cannot_be_shared(tmp_path: Path, kwargs: dict, reason: str) -> None:
    decoder = _write_decoder(tmp_path, _table(0), **kwargs)
    shared, why = find_shared_int4_table(decoder, VOCAB, HIDDEN)
    assert shared is None and reason in why


def test_embeddings_must_sit_beside_the_decoder(tmp_path: Path) -> None:
    table = _table(0)
    shared, why = find_shared_int4_table(_write_decoder(tmp_path / "bundle", table), VOCAB, HIDDEN)
    assert shared is not None, why
    with pytest.raises(ValueError, match="must be written beside the decoder"):
        export_embeddings(table, IMAGE_TOKEN_ID, DEEPSTACK, tmp_path / "elsewhere" / "embeddings.onnx", "int4",
                          shared_table=shared)


def test_no_lm_head_of_that_vocabulary(tmp_path: Path) -> None:
    decoder = _write_decoder(tmp_path, _table(0))
    shared, why = find_shared_int4_table(decoder, VOCAB + 1, HIDDEN)
    assert shared is None and why == f"expected one MatMulNBits with N = {VOCAB + 1} (the lm_head), found 0"


def _external_locations(onnx_path: Path) -> set[str]:
    return {e.value for t in onnx.load(str(onnx_path), load_external_data=False).graph.initializer
            for e in t.external_data if e.key == "location"}


def _int4_bundle(tmp_path: Path, tied: bool, **extra: str) -> tuple[Path, Path]:
    from builder_qwen3vl.pipeline import build
    from builder_qwen3vl.options import BuildOptions
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    ckpt = Path(write_checkpoint(tmp_path / "ckpt", tiny_config(tie_word_embeddings=tied)))
    return ckpt, build(BuildOptions(input=ckpt, output=tmp_path / "bundle", precision="int4", extra_options=extra))


def test_an_untied_checkpoint_keeps_its_own_table(tmp_path: Path) -> None:
    _, bundle = _int4_bundle(tmp_path, tied=False)
    assert _external_locations(bundle / "embeddings.onnx") == {"embeddings.onnx.data"}


def test_a_tied_bundle_with_its_pruned_lm_head_shares_the_table(tmp_path: Path) -> None:
    # The tiny hidden size (64) is narrower than the CPU default block (128): a block that divides it is shared.
    _, bundle = _int4_bundle(tmp_path, tied=True, block_size="32")
    assert _external_locations(bundle / "embeddings.onnx") == {"model.onnx.data"}


def test_a_block_wider_than_the_hidden_size_keeps_an_own_table(tmp_path: Path) -> None:
    _, bundle = _int4_bundle(tmp_path, tied=True)
    assert _external_locations(bundle / "embeddings.onnx") == {"embeddings.onnx.data"}


def test_a_tied_int4_bundle_stores_the_table_once_and_generates_through_og(tmp_path: Path) -> None:
    """og's own generator on the shared-table bundle, prefill logits vs HF fp32 on the same text prompt."""
    import onnxruntime_genai as og

    from compare import cosine_and_top1, load_hf_model
    from e2e_helpers import og_generate, og_process

    ckpt, bundle = _int4_bundle(tmp_path, tied=True, prune_lm_head="false", block_size="32")  # logits for every prompt row
    assert not (bundle / "embeddings.onnx.data").exists()
    assert _external_locations(bundle / "embeddings.onnx") == {"model.onnx.data"}

    model = og.Model(str(bundle))
    prompt = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"
    inputs = og_process(model, prompt, [])
    got = og_generate(model, inputs, 4)
    hf = load_hf_model(ckpt)
    ids = torch.from_numpy(inputs["input_ids"].as_numpy().astype(np.int64)).reshape(1, -1)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()
    cosine, top1 = cosine_and_top1(ref, got.prefill_logits)
    print(f"tied int4 bundle vs HF fp32, text prefill: mean cosine {cosine:.4f}, top-1 {top1:.2f}")
    # measured 0.9645 (top-1 0.67). Same bound as the untied int4 end-to-end test: random weights quantize
    # badly; a mis-read table gives ~0.
    assert cosine > 0.8
