"""Checkpoints HF accepts that the released ones do not exercise: greedy tokens and logits vs HF generate.

- D == num_hidden_layers: HF adds the last DeepStack block after the last decoder layer, before the final norm.
- tie_word_embeddings=true with a stored lm_head.weight that is not the embedding table: transformers >= 5
  does not tie such a checkpoint (it warns and keeps the stored lm_head); the bundle must do the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from builder_qwen3vl import build
from builder_qwen3vl.runtime.og_run import load_model
from builder_qwen3vl.options import BuildOptions
from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint
from builder_qwen3vl.ground.tokens import IMAGE_TOKEN_ID
from compare import load_hf_model, max_abs_diff
from e2e_helpers import (
    chat_prompt,
    hf_generate,
    hf_inputs,
    load_hf_image_processor,
    load_hf_tokenizer,
    og_generate,
    og_process,
    save_images,
    structured_image,
)

LOGITS_TOL = 1e-4  # fp32 bundle vs HF fp32: max|logit diff| over the last prompt position and every decode step
NEAR_TIE = 1e-4  # HF greedy steps closer than this between the top two logits are not comparable
MAX_NEW_TOKENS = 12


def _parity(ckpt: Path, tmp_path: Path, **extra: str) -> tuple[list[int], list[int], float]:
    """Build an fp32 bundle, answer one image question with og and with HF generate; (og, HF tokens, max diff)."""
    bundle = build(BuildOptions(input=ckpt, output=tmp_path / "bundle", precision="fp32", extra_options=extra))
    tokenizer, processor = load_hf_tokenizer(ckpt), load_hf_image_processor(ckpt)
    image = structured_image(300, 200, seed=11)
    paths = save_images(tmp_path, [image], "q")
    prompt = chat_prompt(tokenizer, 1, "Describe the picture.")
    ref_inputs = hf_inputs(tokenizer, processor, prompt, [image])
    assert int((ref_inputs.input_ids == IMAGE_TOKEN_ID).sum()) > 0
    ref = hf_generate(load_hf_model(ckpt), ref_inputs, MAX_NEW_TOKENS)
    model = load_model(bundle)
    got = og_generate(model, og_process(model, prompt, paths), MAX_NEW_TOKENS)
    assert ref.min_margin > NEAR_TIE, "HF greedy has a near-tie; choose another seed"
    steps = min(len(ref.tokens), len(got.tokens))
    return got.tokens, ref.tokens, max_abs_diff(ref.step_logits[:steps], got.step_logits[:steps])


def test_deepstack_block_after_the_last_layer(tmp_path: Path) -> None:
    """D = 3 DeepStack blocks on a 3-layer text model: block 2 lands after layer 2, before the final norm."""
    cfg = tiny_config(num_hidden_layers=3, tie_word_embeddings=False)
    assert len(cfg["vision_config"]["deepstack_visual_indexes"]) == cfg["text_config"]["num_hidden_layers"] == 3
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg)
    og_tokens, hf_tokens, diff = _parity(ckpt, tmp_path)
    print(f"D == layers == 3: og {og_tokens} / HF {hf_tokens}, max|logit diff| {diff:.2e} (tolerance {LOGITS_TOL})")
    assert og_tokens == hf_tokens
    assert diff <= LOGITS_TOL


def _store_lm_head(ckpt: Path, lm_head: torch.Tensor) -> None:
    [shard] = ckpt.glob("*.safetensors")
    tensors = load_file(shard)
    tensors["lm_head.weight"] = lm_head.contiguous()
    save_file(tensors, str(shard), metadata={"format": "pt"})


@pytest.fixture()
def tied_ckpt(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "ckpt", tiny_config(tie_word_embeddings=True))


def test_tied_config_with_another_stored_lm_head_follows_hf(tied_ckpt: Path, tmp_path: Path) -> None:
    table = load_file(next(tied_ckpt.glob("*.safetensors")))["model.language_model.embed_tokens.weight"]
    other = torch.from_numpy(np.random.default_rng(5).standard_normal(tuple(table.shape)).astype(np.float32)) * table.std()
    _store_lm_head(tied_ckpt, other)
    hf = load_hf_model(tied_ckpt)
    # The premise: transformers keeps the stored lm_head instead of tying it to the table.
    assert torch.equal(hf.lm_head.weight, other)
    assert not torch.equal(hf.lm_head.weight, hf.model.language_model.embed_tokens.weight)
    og_tokens, hf_tokens, diff = _parity(tied_ckpt, tmp_path)
    print(f"tied config, other lm_head stored: og {og_tokens} / HF {hf_tokens}, max|logit diff| {diff:.2e}")
    assert og_tokens == hf_tokens
    assert diff <= LOGITS_TOL


def test_tied_config_with_another_stored_lm_head_int4_keeps_its_own_table(tied_ckpt: Path, tmp_path: Path, caplog) -> None:
    """int4: embeddings.onnx must not read the decoder's lm_head as its table (it is not the table)."""
    table = load_file(next(tied_ckpt.glob("*.safetensors")))["model.language_model.embed_tokens.weight"]
    _store_lm_head(tied_ckpt, table.flip(0))
    with caplog.at_level("INFO"):
        bundle = build(BuildOptions(input=tied_ckpt, output=tmp_path / "bundle", precision="int4"))
    assert "the bundle uses the stored lm_head" in caplog.text
    assert "reading the tied" not in caplog.text
    assert (bundle / "embeddings.onnx.data").exists()  # an own int4 table, not a reference into model.onnx.data
