"""The training recipe's plumbing: overrides, the per-kind log, the training-only vision head (seconds)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from tiny_model.train_config import DEFAULT_CONFIG, with_overrides


def test_overrides_parse_each_field_type() -> None:
    cfg = with_overrides(DEFAULT_CONFIG, ["steps=7", "learning_rate=2e-4", "deepstack_visual_indexes=0,2"])
    assert (cfg.steps, cfg.learning_rate, cfg.deepstack_visual_indexes) == (7, 2e-4, (0, 2))
    assert dataclasses.replace(cfg, steps=DEFAULT_CONFIG.steps, learning_rate=DEFAULT_CONFIG.learning_rate,
                               deepstack_visual_indexes=DEFAULT_CONFIG.deepstack_visual_indexes) == DEFAULT_CONFIG


@pytest.mark.parametrize("item, message", [
    ("steps=ten", "--set steps: 'ten' is not an integer"),
    ("learning_rate=fast", "--set learning_rate: 'fast' is not a number"),
    ("deepstack_visual_indexes=", "--set deepstack_visual_indexes: '' is not comma-separated integers"),
    ("nonsense=1", "--set 'nonsense=1': expected NAME=VALUE"),
    ("steps", "--set 'steps': expected NAME=VALUE"),
])
def test_bad_overrides_name_the_field(item: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        with_overrides(DEFAULT_CONFIG, [item])
    assert str(info.value).startswith(message)


def test_accuracy_log_says_na_for_kinds_not_asked() -> None:
    from tiny_model.training import accuracy_text

    text = accuracy_text([("colour", True), ("colour", False), ("count", True)])
    assert text == "all 0.667 colour 0.500 count 1.000 left_of n/a presence n/a"
    assert accuracy_text([]) == "all n/a colour n/a count n/a left_of n/a presence n/a"


def test_vision_head_trains_and_is_not_saved(tmp_path: Path) -> None:
    """Two steps with the training-only vision head: it sees one label per merged token, the loss is
    finite, and the saved folder is a plain Qwen3-VL checkpoint with the same tensor names as before."""
    from safetensors import safe_open
    from tiny_model.model_setup import write_initial_checkpoint
    from tiny_model.training import train

    cfg = dataclasses.replace(DEFAULT_CONFIG, steps=2, batch_size=2, turns=2, vision_aux_weight=1.0,
                              hidden_size=64, intermediate_size=128, vision_hidden_size=64, vision_intermediate_size=128)
    write_initial_checkpoint(tmp_path, cfg)

    def names() -> set[str]:
        found: set[str] = set()
        for shard in tmp_path.glob("*.safetensors"):
            with safe_open(str(shard), "pt") as f:
                found |= set(f.keys())
        return found

    before = names()
    record = train(tmp_path, cfg)
    assert all(math.isfinite(loss) for loss in record["answer_losses_every_20"])
    head = record["final_vision_head_avg20"]  # present only when the head took part
    assert math.isfinite(head["loss"])
    assert "n/a" not in record["final_answer_accuracy_last100"].split()[1]  # the overall figure was measured
    assert names() == before
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["Qwen3VLForConditionalGeneration"]


def test_short_training_run_is_bitwise_deterministic(tmp_path: Path) -> None:
    """Two 3-step runs from the same recipe (vision head included) save the same bits in every tensor,
    and those bits are not the initial ones (the runs did train)."""
    from safetensors.numpy import load_file
    from tiny_model.model_setup import write_initial_checkpoint
    from tiny_model.training import train

    cfg = dataclasses.replace(DEFAULT_CONFIG, steps=3, batch_size=2, turns=2, hidden_size=64, intermediate_size=128,
                              vision_hidden_size=64, vision_intermediate_size=128)
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        write_initial_checkpoint(folder, cfg)
        initial = load_file(str(folder / "model.safetensors"))
        record = train(folder, cfg)
        runs.append((load_file(str(folder / "model.safetensors")), record))
    (a, record_a), (b, record_b) = runs
    assert a.keys() == b.keys()
    differing = [k for k in a if a[k].tobytes() != b[k].tobytes()]
    assert not differing, f"{len(differing)} tensors differ between two runs, e.g. {differing[:3]}"
    assert record_a["answer_losses_every_20"] == record_b["answer_losses_every_20"]
    trained = [k for k in a if a[k].tobytes() != initial[k].tobytes()]
    assert len(trained) > len(a) // 2, f"only {len(trained)} of {len(a)} tensors changed in training"


def test_trained_folder_ships_and_assembles_back(tmp_path: Path) -> None:
    """train_tiny's path on a 2-step recipe: the cached folder's record holds the recipe's fingerprint, the
    shipped files leave the table out, and assembling them gives back every trained tensor bit for bit."""
    from safetensors.numpy import load_file
    from tiny_model.ship import ship
    from tiny_model.train_tiny import trained_checkpoint

    from builder_qwen3vl.shipped.assembly import TABLE_NAME, WEIGHTS, assemble, read_record

    cfg = dataclasses.replace(DEFAULT_CONFIG, steps=2, batch_size=2, turns=2, hidden_size=64, intermediate_size=128,
                              vision_hidden_size=64, vision_intermediate_size=128)
    trained = trained_checkpoint(tmp_path / "cache", cfg)
    record = read_record(trained)
    assert record["fingerprint"]["steps"] == 4 and len(record["fingerprint"]["first_answer_losses"]) == 4
    shipped = ship(trained, tmp_path / "shipped")
    assert TABLE_NAME not in load_file(str(shipped / WEIGHTS))
    assembled = load_file(str(assemble(tmp_path / "assembled", source=shipped) / WEIGHTS))
    original = load_file(str(trained / WEIGHTS))
    assert assembled.keys() == original.keys()
    assert all(assembled[k].tobytes() == original[k].tobytes() for k in original)
