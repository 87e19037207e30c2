"""Running a bundle the way a user does: og.Model with the bundle's genai_config, og's multimodal
processor, og.Generator (greedy). examples/chat.py, ``verify``, the evaluation, the tests and the
benchmarks all generate through here, so they measure and check the same path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..ground import contract
from ..ground.bundle_paths import bundle_file, check_bundle_paths, read_bundle_json
from ..ground.tokens import IMAGE_TAG, SPECIAL_TOKENS, VIDEO_TAG, plain_text
from ..ground.video_settings import check_image_settings

log = logging.getLogger(__name__)


def load_model(bundle: str | Path, threads: int | None = None) -> Any:
    """og.Model for ``bundle``; ``threads`` overrides the intra-op thread count the bundle's
    genai_config gives its three sessions (0 there: onnxruntime's default, every physical core).

    The bundle path rule first (``ground/bundle_paths.py``): a file og would read outside the bundle folder (a name in
    genai_config.json, a symlink, an external data location) is a ``BundlePathError`` (a ValueError, one line
    naming the file and the key); what og itself rejects is its RuntimeError."""
    import onnxruntime_genai as og

    check_bundle_paths(bundle)
    config = og.Config(str(bundle))
    if threads is not None:
        session = {"session_options": {"intra_op_num_threads": threads}}
        config.overlay(json.dumps({"model": {"decoder": session, "embedding": session, "vision": session}}))
    return og.Model(config)


def chat_prompt(tokenizer: Any, question: str, num_images: int = 0, system_prompt: str | None = None, *,
                num_videos: int = 0, special_tokens: Iterable[str] = SPECIAL_TOKENS) -> str:
    """The bundle's chat template (og.Tokenizer) on one user turn: the video tags, the image tags, the question.

    ``question`` and ``system_prompt`` are the user's text: special tokens typed in them stay text
    (``tokens.plain_text``), so they never become a placeholder, a vision marker or a turn. Visual tags come
    only from ``num_videos`` and ``num_images``. ``special_tokens``: the bundle's (``tokens.special_tokens``);
    the released vocabulary's are always included."""
    messages = [system_turn(system_prompt, special_tokens)] if system_prompt else []
    messages.append(user_turn(question, num_images, num_videos, special_tokens))
    return render(tokenizer, messages)


def system_turn(text: str, special_tokens: Iterable[str] = SPECIAL_TOKENS) -> dict[str, str]:
    return {"role": "system", "content": plain_text(text, special_tokens)}


def user_turn(question: str, num_images: int = 0, num_videos: int = 0,
              special_tokens: Iterable[str] = SPECIAL_TOKENS) -> dict[str, str]:
    """One user message: the video tags, the image tags, then the question kept as text."""
    return {"role": "user", "content": VIDEO_TAG * num_videos + IMAGE_TAG * num_images + plain_text(question, special_tokens)}


def render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The bundle's chat template (og.Tokenizer) over ``messages``, ending with the assistant's turn opened."""
    return tokenizer.apply_chat_template(messages=json.dumps(messages), add_generation_prompt=True)


def resize_settings(bundle: str | Path) -> dict[str, int]:
    """The Resize step of the bundle's processor_config.json, as keyword arguments of ``resize.resize_for_og``.
    The file outside the bundle folder (a symlink) is a ``BundlePathError``; sizes past what one picture may cost
    (``video_settings.check_image_settings``) a ValueError."""
    path = bundle_file(bundle, contract.PROCESSOR_CONFIG_FILENAME)
    doc = read_bundle_json(path)
    attrs = next(t["operation"]["attrs"] for t in doc["processor"]["transforms"] if t["operation"]["type"] == "Resize")
    settings = {k: int(attrs[k]) for k in ("patch_size", "merge_size", "min_pixels", "max_pixels")}
    check_image_settings(str(path), **settings)
    return settings


def greedy(model: Any, inputs: Any, max_new_tokens: int, *, keep_logits: bool = False) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yield (token, logits) per generated token, greedy, batch 1, until EOS or ``max_new_tokens``.

    ``inputs``: og's processor output (og.NamedTensors) or a [1, S] array of prompt token ids.
    max_length is the prompt + ``max_new_tokens``: og sizes its KV buffer by it. It is capped at the bundle's
    ``search.max_length`` (og would otherwise allocate past the budget the bundle was built for, up to
    ``context_length``); a prompt that leaves no room for one new token is a ValueError (one line). ``logits`` (with
    ``keep_logits``) is og's "logits" output after the step: [1, S, V] for the prompt step ([1, 1, V]
    with the bundle's pruned lm_head), [1, 1, V] for the others.
    """
    import onnxruntime_genai as og

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected an integer >= 1")
    ids = inputs if isinstance(inputs, np.ndarray) else inputs["input_ids"].as_numpy()
    prompt_tokens = int(ids.shape[-1])
    params = og.GeneratorParams(model)
    limit = int(params.get_search_options()["max_length"])  # genai_config.json search.max_length (or an overlay)
    if prompt_tokens >= limit:
        raise ValueError(f"the prompt is {prompt_tokens} tokens (chat template and image tokens included); the bundle's "
                         f"search.max_length is {limit} (genai_config.json; prompt and answer together)")
    if prompt_tokens + max_new_tokens > limit:
        log.warning("answer capped at %d new tokens: the prompt is %d tokens and the bundle's search.max_length is %d",
                    limit - prompt_tokens, prompt_tokens, limit)
    params.set_search_options(do_sample=False, max_length=min(prompt_tokens + max_new_tokens, limit))
    generator = og.Generator(model, params)
    if isinstance(inputs, np.ndarray):
        generator.append_tokens(inputs)
    else:
        generator.set_inputs(inputs)
    while not generator.is_done():
        generator.generate_next_token()
        logits = np.array(generator.get_output("logits"), dtype=np.float32) if keep_logits else None
        yield int(generator.get_next_tokens()[0]), logits
