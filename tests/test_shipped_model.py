"""The trained tiny model ships as files in the package: small, from today's recipe, and whole again
once its embedding table is regenerated."""

from __future__ import annotations

import json
import subprocess
import sys

from safetensors import safe_open

from builder_qwen3vl.testing import shipped_model
from builder_qwen3vl.testing.shipped_model import TABLE_NAME, WEIGHTS, read_record, recipe_hash, shipped_dir
from builder_qwen3vl.testing.training import embedding_table, table_sha256

MAX_SHIPPED_MB = 20  # the aim; the weights without the table are 3.5M fp32 parameters (~14 MB)


def test_shipped_weights_come_from_todays_recipe() -> None:
    """A recipe change (training code, task, initial weights, tokenizer, recipe values) without a retrain
    fails here: retrain with `python -m builder_qwen3vl.testing.train_tiny --ship` and commit the files."""
    record = read_record()
    with safe_open(str(shipped_dir() / WEIGHTS), "np") as f:
        stored = f.metadata()["recipe_hash"]
    assert stored == record["recipe_hash"]
    assert record["recipe_hash"] == recipe_hash(), "the recipe changed since the shipped model was trained"


def test_shipped_files_are_small_and_leave_the_table_out() -> None:
    size_mb = sum(p.stat().st_size for p in shipped_dir().iterdir()) / 1e6
    print(f"shipped files: {size_mb:.1f} MB")
    assert size_mb < MAX_SHIPPED_MB
    with safe_open(str(shipped_dir() / WEIGHTS), "np") as f:
        names = set(f.keys())
    assert TABLE_NAME not in names and len(names) > 100


def test_embedding_table_regenerates_bit_exactly() -> None:
    """The table regenerated now (in a fresh process) has the SHA-256 of the table the model trained with,
    recorded from the trained model's own tensor when it was saved."""
    record = read_record()
    text = json.loads((shipped_dir() / "config.json").read_text())["text_config"]
    cfg = record["config"]
    code = ("import sys; from builder_qwen3vl.testing.training import embedding_table, table_sha256; "
            f"print(table_sha256(embedding_table({text['vocab_size']}, {text['hidden_size']}, "
            f"{cfg['embedding_std']!r}, {cfg['seed']})))")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert fresh == record["parameters"]["embedding_table_sha256"]


def test_embedding_table_statistics() -> None:
    table = embedding_table(4096, 64, 0.3, 0)
    assert table.dtype.name == "float32" and table.shape == (4096, 64)
    assert abs(float(table.mean())) < 0.003 and abs(float(table.std()) - 0.3) < 0.003  # 262,144 draws
    assert table_sha256(table) != table_sha256(embedding_table(4096, 64, 0.3, 1))  # the seed matters


def test_assembled_folder_is_the_trained_checkpoint(tmp_path) -> None:
    """HF loads the assembled folder with nothing missing; its tied table is the regenerated one."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    folder = shipped_model.assemble(tmp_path / "ckpt")
    model, info = Qwen3VLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32,
                                                                  output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    table = model.get_input_embeddings().weight.detach().numpy()
    assert table_sha256(table) == read_record()["parameters"]["embedding_table_sha256"]
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
