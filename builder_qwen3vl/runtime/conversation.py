"""A conversation about pictures that keeps og's generator, and so its KV cache, from one question to the next.

The first question goes through og's multimodal processor with the pictures (the vision encoder runs once); each
later question is appended to the same generator as token ids (``append_tokens``), so it costs only its own
tokens. og 0.18 continues a multimodal prompt correctly: its 3-D position ids for appended text are the running
position plus the prompt's rope delta, HF's rule for text after pictures (``Qwen2VLPositionInputs``), and its
KV cache holds every processed token.

What is appended is exactly what the chat template adds for the new turn: the template is rendered over the
whole conversation and the part after the text already processed is tokenized. Two facts of og's generator make
that text line up with the cache:
- a greedy run that ends on an end-of-turn token leaves that token out of the sequence (it was never fed to the
  model), and the template's own ``<|im_end|>`` after the answer, the first token of the new turn's text, feeds it;
- a run cut by ``max_new_tokens`` leaves its last token in the sequence but not in the cache: the generator is
  rewound by one and that token is fed again in front of the new turn.
When the template rewrites an earlier turn (its rendering of the history no longer starts with the text already
processed), the conversation starts over from the whole history, pictures included, and says so in the log.

Special tokens typed in a question stay text (``tokens.plain_text``); pictures come only from ``images``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..ground.tokens import EOS_IDS, SPECIAL_TOKENS
from .image_io import og_images
from .og_run import render, system_turn, user_turn

log = logging.getLogger(__name__)


class Conversation:
    """Questions about the same pictures, answered greedily by one og generator kept across turns.

    ``images``: paths or PIL images, shown with the first question. ``special_tokens``: the bundle's
    (``tokens.special_tokens(bundle)``), kept as text in questions. ``max_length``: the generator's budget of
    prompt and answers together; None: the bundle's ``search.max_length``.
    """

    def __init__(self, model: Any, images: Sequence[str | Path | Image.Image] = (), *, system_prompt: str | None = None,
                 special_tokens: Iterable[str] = SPECIAL_TOKENS, max_length: int | None = None) -> None:
        import onnxruntime_genai as og

        self._og, self.model = og, model
        self.images = list(images)
        self.special_tokens = tuple(special_tokens)
        self.tokenizer = og.Tokenizer(model)
        self.processor = model.create_multimodal_processor()
        self.messages: list[dict[str, str]] = []
        if system_prompt:
            self.messages.append(system_turn(system_prompt, self.special_tokens))
        params = og.GeneratorParams(model)
        self.max_length = int(max_length or params.get_search_options()["max_length"])
        self._generator: Any = None
        self._processed = ""  # the conversation's text the generator has taken in
        self._pending: int | None = None  # an answer's last token, in the sequence but not in the KV cache
        self.restarts = 0  # how often the template's rewrite of the history forced a new prefill

    @property
    def length(self) -> int:
        """Tokens in the generator's sequence (0 before the first question)."""
        return 0 if self._generator is None else len(self._generator.get_sequence(0))

    def close(self) -> None:
        """Let go of the generator and its KV cache (sized by ``max_length``); a next question starts anew."""
        self._generator = None
        self._processed = ""
        self._pending = None

    def ask(self, question: str, max_new_tokens: int = 64) -> list[int]:
        """The answer's token ids (without the end-of-turn token), greedy; see ``stream`` for the pieces."""
        return [token for token, _ in self.stream(question, max_new_tokens)]

    def stream(self, question: str, max_new_tokens: int = 64) -> Iterator[tuple[int, str]]:
        """Yield (token id, text piece) of the answer to ``question`` as they are generated.

        ValueError (one line) when the question leaves no room for an answer in ``max_length``.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: expected an integer >= 1")
        first = not any(m["role"] == "user" for m in self.messages)
        self.messages.append(user_turn(question, len(self.images) if first else 0, special_tokens=self.special_tokens))
        text = render(self.tokenizer, self.messages)
        try:
            self._feed(text)
        except BaseException:
            self.messages.pop()
            raise
        stream = self.tokenizer.create_stream()
        answer: list[int] = []
        generator = self._generator
        budget = min(max_new_tokens, self.max_length - self.length)
        ended = False
        while len(answer) < budget and not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in EOS_IDS:
                ended = True
                break
            answer.append(token)
            yield token, stream.decode(token)
        # A run cut by the token budget leaves its last token unprocessed (see the module docstring).
        self._pending = answer[-1] if answer and not ended else None
        reply = self.tokenizer.decode(answer) if answer else ""
        self.messages.append({"role": "assistant", "content": reply})
        self._processed = text + reply

    def _feed(self, text: str) -> None:
        """Give the generator the part of ``text`` it has not taken in yet (all of it on the first question)."""
        if self._generator is not None and not text.startswith(self._processed):
            log.info("the chat template rewrote an earlier turn; the conversation starts over from its whole history")
            self.restarts += 1
            self._generator = None
        if self._generator is None:
            self._start(text)
            return
        ids = [int(t) for t in self.tokenizer.encode(text[len(self._processed):])]
        if self._pending is not None:
            self._generator.rewind_to(self.length - 1)
            ids.insert(0, self._pending)
        self._check_room(self.length + len(ids))
        self._generator.append_tokens(ids)

    def _start(self, text: str) -> None:
        og = self._og
        inputs = self.processor(text, images=og_images(og, self.images) if self.images else None)
        self._check_room(int(inputs["input_ids"].as_numpy().shape[-1]))
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=self.max_length)
        self._generator = og.Generator(self.model, params)
        self._generator.set_inputs(inputs)
        self._pending = None

    def _check_room(self, tokens: int) -> None:
        if tokens >= self.max_length:
            raise ValueError(f"the conversation is {tokens} tokens (chat template and image tokens included); its "
                             f"max_length is {self.max_length} (the bundle's search.max_length unless given)")
