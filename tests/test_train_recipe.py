"""The training recipe's plumbing: overrides, the per-kind log, the training-only vision head (seconds)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from builder_qwen3vl.testing.train_config import DEFAULT_CONFIG, with_overrides


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
    from builder_qwen3vl.testing.training import accuracy_text

    text = accuracy_text([("colour", True), ("colour", False), ("count", True)])
    assert text == "all 0.667 colour 0.500 count 1.000 left_of n/a presence n/a"
    assert accuracy_text([]) == "all n/a colour n/a count n/a left_of n/a presence n/a"


def test_vision_head_trains_and_is_not_saved(tmp_path: Path) -> None:
    """Two steps with the training-only vision head: it sees one label per merged token, the loss is
    finite, and the saved folder is a plain Qwen3-VL checkpoint with the same tensor names as before."""
    from safetensors import safe_open

    from builder_qwen3vl.testing.checkpoints import write_checkpoint
    from builder_qwen3vl.testing.training import model_config, train, write_preprocessor_config

    cfg = dataclasses.replace(DEFAULT_CONFIG, steps=2, batch_size=2, turns=2, vision_aux_weight=1.0,
                              hidden_size=64, intermediate_size=128, vision_hidden_size=64, vision_intermediate_size=128)
    write_checkpoint(tmp_path, model_config(cfg), seed=0)
    write_preprocessor_config(tmp_path, cfg)

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

    from builder_qwen3vl.testing.checkpoints import write_checkpoint
    from builder_qwen3vl.testing.training import model_config, train, write_preprocessor_config

    cfg = dataclasses.replace(DEFAULT_CONFIG, steps=3, batch_size=2, turns=2, hidden_size=64, intermediate_size=128,
                              vision_hidden_size=64, vision_intermediate_size=128)
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        write_checkpoint(folder, model_config(cfg), seed=cfg.seed)
        write_preprocessor_config(folder, cfg)
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
