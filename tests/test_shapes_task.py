"""The shapes task and the training labels (no training here: seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

from builder_qwen3vl.testing import shapes_task
from builder_qwen3vl.testing.train_tiny import DEFAULT_CONFIG


def _expected_answer(kind: str, question: str, shapes: tuple[shapes_task.Shape, ...]) -> str:
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
    raise AssertionError(f"unknown kind {kind}")


def test_every_answer_follows_from_the_scene() -> None:
    seen: set[str] = set()
    for index in range(300):
        dialogue = shapes_task.make_dialogue(shapes_task.TRAIN_SEED, index, DEFAULT_CONFIG.turns)
        assert len({q for _, q, _ in dialogue.turns}) == len(dialogue.turns)  # no question repeated
        for kind, question, answer in dialogue.turns:
            seen.add(kind)
            assert answer == _expected_answer(kind, question, dialogue.shapes), (index, question)
    assert seen == set(shapes_task.QUESTION_KINDS)


def test_dialogue_starts_with_the_single_question_sample() -> None:
    for index in range(20):
        sample = shapes_task.make_sample(shapes_task.TRAIN_SEED, index)
        first = shapes_task.make_dialogue(shapes_task.TRAIN_SEED, index, DEFAULT_CONFIG.turns).turns[0]
        assert first == (sample.kind, sample.question, sample.answer)


def test_training_labels_are_the_answers_and_their_im_end(tmp_path: Path) -> None:
    from builder_qwen3vl.testing.tokenizer import write_tokenizer
    from builder_qwen3vl.testing.train_tiny import IGNORE, Encoder

    write_tokenizer(tmp_path)
    encoder = Encoder(tmp_path, DEFAULT_CONFIG.min_pixels, DEFAULT_CONFIG.max_pixels)
    dialogue = shapes_task.make_dialogue(shapes_task.TRAIN_SEED, 5, DEFAULT_CONFIG.turns)
    example, ids, labels = encoder.encode_dialogue(dialogue)
    assert len(ids) == len(labels)
    labelled = [t for t in labels if t != IGNORE]
    expected = [t for _, _, answer in dialogue.turns for t in encoder.ids(answer) + encoder.ids("<|im_end|>")]
    assert labelled == expected
    # The first turn is the evaluation prompt: the same ids as a single-question encoding.
    assert example["input_ids"] == encoder.encode(dialogue.image, dialogue.turns[0][1])["input_ids"]
