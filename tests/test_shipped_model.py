"""The trained tiny model ships as files in the package: small, from today's recipe, and whole again
once its embedding table is regenerated."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from safetensors import safe_open
from tiny_model import fingerprint
from tiny_model.train_config import DEFAULT_CONFIG, with_overrides

from builder_qwen3vl.shipped import assembly
from builder_qwen3vl.shipped.assembly import TABLE_NAME, WEIGHTS, read_record, shipped_dir
from builder_qwen3vl.shipped.table import embedding_table, table_sha256

MAX_SHIPPED_MB = 20  # the aim; the weights without the table are 3.5M fp32 parameters (~14 MB)
MAX_REPLAY_SECONDS = 120  # ~10 s on one idle core; a shared CI box may be several times slower


@pytest.fixture(scope="module")
def record() -> dict:
    return read_record()


def test_shipped_weights_come_from_todays_recipe(record: dict) -> None:
    """Replaying the recipe's first steps gives the recorded fingerprint: a change anywhere that alters
    what training does (code, imported modules, recipe values) without a retrain fails here; retrain with
    `python tools/tiny_model/train_tiny.py --ship` and commit the files."""
    start = time.perf_counter()
    problems = fingerprint.replay(record)
    seconds = time.perf_counter() - start
    print(f"fingerprint replay: {seconds:.1f} s")
    assert not problems, "the recipe changed since the shipped model was trained:\n" + "\n".join(problems)
    assert seconds < MAX_REPLAY_SECONDS


@pytest.mark.parametrize("change, caught_by", [
    ("learning_rate=0.0011", "first_answer_losses"),  # step 0 is before any update: steps 1.. must catch it
    ("seed=1", "initial_weights_sha256"),
])
def test_a_recipe_change_fails_the_replay(record: dict, change: str, caught_by: str) -> None:
    problems = fingerprint.replay(record, with_overrides(DEFAULT_CONFIG, [change]))
    assert any(p.startswith("recipe values differ") for p in problems)  # the recorded values name the change
    fresh_only = [p for p in problems if not p.startswith("recipe values differ")]
    assert any(p.startswith(caught_by) for p in fresh_only), problems


def test_a_change_in_an_imported_module_fails_the_replay(record: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Red one step bluer in the task's palette (builder_qwen3vl.shipped.shapes_task, imported by training):
    the recipe values are unchanged, the pictures are not."""
    from builder_qwen3vl.shipped import shapes_task

    monkeypatch.setitem(shapes_task.COLOURS, "red", (220, 30, 31))
    problems = fingerprint.replay(record)
    assert any(p.startswith("first_batch_sha256") for p in problems), problems
    assert not any(p.startswith("recipe values differ") for p in problems)


def test_a_change_after_the_replayed_steps_fails_on_the_recorded_values(record: dict) -> None:
    """``steps`` moves only the cosine part of the schedule, after the replayed steps: the schedule's hash
    and the recorded recipe values catch it without a replay."""
    cfg = with_overrides(DEFAULT_CONFIG, ["steps=3000"])
    assert fingerprint.lr_schedule_sha256(cfg) != record["fingerprint"]["lr_schedule_sha256"]
    assert fingerprint.lr_schedule_sha256(DEFAULT_CONFIG) == record["fingerprint"]["lr_schedule_sha256"]


def test_loss_tolerance_is_relative_and_tight(record: dict) -> None:
    recorded = record["fingerprint"]
    nudged = dict(recorded, first_answer_losses=[x * (1 + 2e-6) for x in recorded["first_answer_losses"]])
    assert not fingerprint.compare(recorded, nudged)  # a different CPU's kernels: within tolerance
    moved = dict(recorded, first_answer_losses=[x * (1 + 1e-4) for x in recorded["first_answer_losses"]])
    assert fingerprint.compare(recorded, moved)


def test_shipped_files_are_small_and_leave_the_table_out() -> None:
    size_mb = sum(p.stat().st_size for p in shipped_dir().iterdir()) / 1e6
    print(f"shipped files: {size_mb:.1f} MB")
    assert size_mb < MAX_SHIPPED_MB
    with safe_open(str(shipped_dir() / WEIGHTS), "np") as f:
        names = set(f.keys())
    assert TABLE_NAME not in names and len(names) > 100


def test_embedding_table_regenerates_bit_exactly(record: dict) -> None:
    """The table regenerated now (in a fresh process) has the SHA-256 of the table the model trained with,
    recorded from the trained model's own tensor when it was saved."""
    text = json.loads((shipped_dir() / "config.json").read_text())["text_config"]
    cfg = record["config"]
    code = ("import sys; from builder_qwen3vl.shipped.table import embedding_table, table_sha256; "
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

    folder = assembly.assemble(tmp_path / "ckpt")
    model, info = Qwen3VLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32,
                                                                  output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    table = model.get_input_embeddings().weight.detach().numpy()
    assert table_sha256(table) == read_record()["parameters"]["embedding_table_sha256"]
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
