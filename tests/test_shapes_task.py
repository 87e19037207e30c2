"""The shapes task and the training labels (no training here: seconds, not minutes)."""

from __future__ import annotations

import pytest
from tiny_model.dialogues import make_dialogue
from tiny_model.train_config import DEFAULT_CONFIG
from tiny_model.vision_head import token_labels

from builder_qwen3vl.shipped import shapes_task


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
        dialogue = make_dialogue(shapes_task.TRAIN_SEED, index, DEFAULT_CONFIG.turns)
        assert len({q for _, q, _ in dialogue.turns}) == len(dialogue.turns)  # no question repeated
        for kind, question, answer in dialogue.turns:
            seen.add(kind)
            assert answer == _expected_answer(kind, question, dialogue.shapes), (index, question)
    assert seen == set(shapes_task.QUESTION_KINDS)


def test_dialogue_starts_with_the_single_question_sample() -> None:
    for index in range(20):
        sample = shapes_task.make_sample(shapes_task.TRAIN_SEED, index)
        first = make_dialogue(shapes_task.TRAIN_SEED, index, DEFAULT_CONFIG.turns).turns[0]
        assert first == (sample.kind, sample.question, sample.answer)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory):
    """The training encoder (real tokenizer and chat template, HF's PIL image processor)."""
    from tiny_model.encoding import Encoder

    from builder_qwen3vl.shipped.tokenizer import write_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(folder)
    return Encoder(folder, DEFAULT_CONFIG.min_pixels, DEFAULT_CONFIG.max_pixels)


def test_training_labels_are_the_answers_and_their_im_end(encoder) -> None:
    from tiny_model.encoding import IGNORE

    dialogue = make_dialogue(shapes_task.TRAIN_SEED, 5, DEFAULT_CONFIG.turns)
    example, ids, labels = encoder.encode_dialogue(dialogue)
    assert len(ids) == len(labels)
    labelled = [t for t in labels if t != IGNORE]
    expected = [t for _, _, answer in dialogue.turns for t in encoder.ids(answer) + encoder.ids("<|im_end|>")]
    assert labelled == expected
    # The first turn is the evaluation prompt: the same ids as a single-question encoding.
    assert example["input_ids"] == encoder.encode(dialogue.image, dialogue.turns[0][1])["input_ids"]


_KIND = {k: i + 1 for i, k in enumerate(shapes_task.SHAPES)}
_COLOUR = {c: i + 1 for i, c in enumerate(shapes_task.COLOURS)}


def test_token_labels_follow_the_shapes_on_the_merged_grid() -> None:
    # 128x64 px picture = a 2x4 merged grid of 32 px tokens (no resize needed).
    square = shapes_task.Shape("square", "red", (0, 0, 31, 31))  # exactly token (0, 0)
    circle = shapes_task.Shape("circle", "blue", (70, 10, 120, 60))  # centre (95, 35): tokens of columns 2-3
    kinds, colours = token_labels((square, circle), (128, 64), (2, 4))
    assert (kinds[0], colours[0]) == (_KIND["square"], _COLOUR["red"])
    assert kinds[1] == 0 and kinds[4] == 0 and kinds[5] == 0  # nothing drawn there
    assert {kinds[i] for i in (2, 3, 6, 7)} == {_KIND["circle"]}
    assert {colours[i] for i in (2, 3, 6, 7)} == {_COLOUR["blue"]}


def test_token_labels_scale_with_the_processed_size() -> None:
    # A 64x32 picture processed at 128x64: x 20..31 becomes 40..62, inside token 1 (unscaled it is token 0).
    square = shapes_task.Shape("square", "green", (20, 0, 31, 15))
    kinds, colours = token_labels((square,), (64, 32), (2, 4))
    assert kinds == [0, _KIND["square"]] + [0] * 6 and colours[1] == _COLOUR["green"]


def test_token_labels_match_the_processor_pixels(encoder) -> None:
    """Labels against what the vision tower is given: HF's processor output, one merged token = 4
    consecutive patch rows (row-major over the merged grid), each patch (channel, time, 16, 16)."""
    colour_of = {tuple(c / 255 for c in rgb): i + 1 for i, rgb in enumerate(shapes_task.COLOURS.values())}
    for index in range(12):
        sample = shapes_task.make_sample(shapes_task.TRAIN_SEED, index)
        encoded = encoder.encode(sample.image, sample.question)
        _, h, w = (int(v) for v in encoded["image_grid_thw"][0])
        kinds, colours = token_labels(sample.shapes, sample.image.size, (h // 2, w // 2))
        # Back to [0, 1] RGB, one row of 4 * 16 * 16 pixels per merged token (first frame of the pair).
        rgb_TC4PP = (encoded["pixel_values"].view(-1, 4, 3, 2, 16, 16)[:, :, :, 0] * 0.5 + 0.5).transpose(1, 2)
        rgb_TNC = rgb_TC4PP.reshape(len(kinds), 3, -1).transpose(1, 2)
        coloured_TN = (rgb_TNC.max(-1).values - rgb_TNC.min(-1).values) > 0.3  # the grey background has none
        share_T = coloured_TN.float().mean(-1)
        for t, (kind, colour) in enumerate(zip(kinds, colours)):
            if share_T[t] >= 0.25:  # mostly shape: labelled, with the colour of its pixels
                pixels = rgb_TNC[t][coloured_TN[t]].mean(0)
                nearest = min(colour_of, key=lambda c: sum((a - b) ** 2 for a, b in zip(c, pixels.tolist())))
                assert kind > 0 and colour == colour_of[nearest], (index, t)
            if share_T[t] == 0:  # no shape pixel at all: background
                assert kind == 0, (index, t)
        assert {shapes_task.SHAPES[k - 1] for k in kinds if k} == {s.kind for s in sample.shapes}
