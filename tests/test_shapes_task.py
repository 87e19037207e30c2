"""The shapes task and the training recipe plumbing (no training here: seconds, not minutes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from builder_qwen3vl.testing import shapes_task
from builder_qwen3vl.testing.train_config import DEFAULT_CONFIG, with_overrides


def _expected_answer(kind: str, question: str, shapes: tuple[shapes_task.Shape, ...], width: int) -> str:
    """The answer recomputed from the scene and the question text alone."""
    by_kind = {s.kind: s for s in shapes}
    words = question.rstrip("?").split()
    if kind == "colour":
        return by_kind[words[-1]].colour
    if kind == "count":
        return shapes_task.COUNT_WORDS[len(shapes)]
    if kind == "left_of":  # "Is the A left of the B?"
        return "yes" if by_kind[words[2]].centre_x < by_kind[words[-1]].centre_x else "no"
    if kind == "presence":
        return "yes" if words[-1] in by_kind else "no"
    if kind == "leftmost":
        return min(shapes, key=lambda s: s.centre_x).kind
    if kind == "rightmost":
        return max(shapes, key=lambda s: s.centre_x).kind
    if kind == "shape_of_colour":
        (match,) = [s for s in shapes if s.colour == words[-1]]  # the asked colour must name exactly one shape
        return match.kind
    if kind == "shape_name":
        (only,) = shapes
        return only.kind
    if kind == "left_half":
        (only,) = shapes
        return "yes" if only.centre_x < width / 2 else "no"
    raise AssertionError(f"unknown kind {kind}")


def test_every_answer_follows_from_the_scene() -> None:
    seen: set[str] = set()
    for index in range(400):
        max_shapes = 1 if index % 4 == 0 else 3  # the curriculum's one-shape pictures too
        dialogue = shapes_task.make_dialogue(shapes_task.TRAIN_SEED, index, 8, shapes_task.ALL_KINDS, max_shapes)
        assert len(dialogue.shapes) <= max_shapes
        assert len({q for _, q, _ in dialogue.turns}) == len(dialogue.turns)  # no question repeated
        for kind, question, answer in dialogue.turns:
            seen.add(kind)
            assert answer == _expected_answer(kind, question, dialogue.shapes, dialogue.image.width), (index, question)
            if kind == "left_half":  # never asked about a shape near the middle
                assert abs(dialogue.shapes[0].centre_x / dialogue.image.width - 0.5) > shapes_task.LEFT_HALF_MARGIN
    assert seen == set(shapes_task.ALL_KINDS)


def test_held_out_questions_are_the_evaluated_kinds() -> None:
    samples = shapes_task.make_samples(shapes_task.HELD_OUT_SEED, 200)
    assert {s.kind for s in samples} == set(shapes_task.QUESTION_KINDS)
    # With the default kinds, a training dialogue's first turn is the single-turn sample of the same index.
    for index in range(20):
        sample = shapes_task.make_sample(shapes_task.TRAIN_SEED, index)
        first = shapes_task.make_dialogue(shapes_task.TRAIN_SEED, index, 6).turns[0]
        assert first == (sample.kind, sample.question, sample.answer)


def test_recipe_overrides_parse_by_field_type() -> None:
    cfg = with_overrides(DEFAULT_CONFIG, ["steps=7", "learning_rate=0.5", "training_only_questions=false",
                                          "deepstack_visual_indexes=0,2"])
    assert (cfg.steps, cfg.learning_rate, cfg.training_only_questions, cfg.deepstack_visual_indexes) == (7, 0.5, False, (0, 2))
    assert dataclasses.replace(cfg, steps=DEFAULT_CONFIG.steps, learning_rate=DEFAULT_CONFIG.learning_rate,
                               training_only_questions=DEFAULT_CONFIG.training_only_questions,
                               deepstack_visual_indexes=DEFAULT_CONFIG.deepstack_visual_indexes) == DEFAULT_CONFIG
    for bad in ("stepz=3", "steps", "training_only_questions=maybe"):
        with pytest.raises(ValueError, match="--set"):
            with_overrides(DEFAULT_CONFIG, [bad])


def test_cache_key_follows_config_values() -> None:
    pytest.importorskip("torch")
    from builder_qwen3vl.testing.train_tiny import content_hash

    assert content_hash(DEFAULT_CONFIG) == content_hash(dataclasses.replace(DEFAULT_CONFIG))
    assert content_hash(DEFAULT_CONFIG) != content_hash(dataclasses.replace(DEFAULT_CONFIG, steps=DEFAULT_CONFIG.steps + 1))


def test_training_labels_mark_each_answer_and_its_kind(tmp_path: Path) -> None:
    from builder_qwen3vl.testing.tokenizer import write_tokenizer
    from builder_qwen3vl.testing.train_tiny import IGNORE, Encoder

    write_tokenizer(tmp_path)
    encoder = Encoder(tmp_path, DEFAULT_CONFIG.min_pixels, DEFAULT_CONFIG.max_pixels)
    dialogue = shapes_task.make_dialogue(shapes_task.TRAIN_SEED, 5, 8, shapes_task.ALL_KINDS)
    example, ids, labels, kinds = encoder.encode_dialogue(dialogue)
    assert len(ids) == len(labels) == len(kinds)
    # The labelled tokens are, in order, each answer word followed by <|im_end|>.
    labelled = [t for t in labels if t != IGNORE]
    expected = [t for _, _, answer in dialogue.turns for t in encoder.ids(answer) + encoder.ids("<|im_end|>")]
    assert labelled == expected
    answer_kinds = [shapes_task.ALL_KINDS[k] for k in kinds if k >= 0]
    assert answer_kinds == [kind for kind, _, _ in dialogue.turns]  # one token per answer word
    # The first turn is the evaluation prompt: the same ids as a single-question encoding.
    assert example["input_ids"] == encoder.encode(dialogue.image, dialogue.turns[0][1])["input_ids"]
