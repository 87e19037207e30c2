"""One og.Model for every request; one generation per call, one token step at a time, with the prompt cache.

``Engine`` lives in the og worker process (``worker.run``); ``Engine.generate`` runs in one of its threads: it
renders the chat template over the request's messages (``og_run.render``; the messages already keep typed special
tokens as text), continues a kept generator whose processed ids and pictures begin the prompt
(``runtime.prompt_cache``) or starts a new one through og's processor, then generates, reading the job's cancel
flag before each token step.

A kept generator's KV cache holds its prompt, its answer budget and ``KEPT_ROOM`` more tokens for later turns, not
the bundle's whole max_length: og allocates and clears the buffer when it makes the generator, which for the 2B
shape at max_length 8192 (1.9 GB) takes seconds, before the first token. A later turn that does not fit starts
anew.

Kept across requests are greedy generators only (temperature 0, no minimum length): their answer depends on the
tokens alone, so a continued generator answers as a new one does. A sampled request gets a new generator, made
with its own search options and seed, and it is not kept. Requests with a video are not cached either: og takes
their frames as pre-patched pixels (``runtime.video.og_inputs``), one request at a time.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Protocol

from ..ground.bundle_paths import bundle_file, read_bundle_json
from ..ground.contract import GENAI_CONFIG_FILENAME
from ..ground.tokens import EOS_IDS, IMAGE_PAD, special_tokens
from ..runtime.image_io import read_image_bytes
from ..runtime.og_run import load_model, render, resize_settings
from ..runtime.prompt_cache import (
    CachedGenerator,
    PromptCache,
    collapse_pads,
    continue_with,
    kv_cache_bytes,
)
from .errors import APIError
from .images import decode_image, decode_video, og_png
from .protocol import Chat, StopText

log = logging.getLogger(__name__)

# Tokens a kept generator holds beyond its prompt and answer budget, for the turns that continue it (a question and
# the answer before it). og clears them when it makes the generator: 0.1-0.3 ms a token at the 2B shape (224 KiB of
# KV cache each), measured.
KEPT_ROOM = 512


class Job(Protocol):
    """What a generation reads and writes: ``worker.WorkerJob`` (events go to the HTTP process)."""

    cancel: threading.Event

    def mark(self, stage: str) -> None: ...

    def emit(self, event: tuple[Any, ...]) -> None: ...


class Engine:
    """The bundle's og.Model, tokenizer and settings, and the prompt cache, shared by all requests."""

    def __init__(self, bundle: str | Path, *, threads: int | None = None, cache_slots: int = 4) -> None:
        import onnxruntime_genai as og

        self._og, self.bundle = og, Path(bundle)
        self.model = load_model(bundle, threads)
        self.tokenizer = og.Tokenizer(self.model)
        self.special_tokens = special_tokens(bundle)
        self.search = og.GeneratorParams(self.model).get_search_options()  # genai_config.json "search"
        self.max_length = int(self.search["max_length"])
        self.resize = resize_settings(bundle)
        self.pad_id = int(self.tokenizer.to_token_id(IMAGE_PAD))
        self.cache = PromptCache(cache_slots)
        self.kv_bytes = kv_cache_bytes(read_bundle_json(bundle_file(bundle, GENAI_CONFIG_FILENAME)), self.max_length)
        self._local = threading.local()  # one og processor per worker thread

    def _processor(self) -> Any:
        if not hasattr(self._local, "processor"):
            self._local.processor = self.model.create_multimodal_processor()
        return self._local.processor

    def generate(self, chat: Chat, job: Job) -> None:
        """Answer ``chat``, emitting ("ready", {prompt_tokens, cached_tokens}), ("text", piece)...,
        ("done", {finish_reason, completion_tokens}) on ``job``. APIError (400) for what the request gives wrong."""
        og = self._og
        job.mark("to worker")
        text = render(self.tokenizer, chat.messages)
        pictures = tuple(p.sha256 for p in chat.pictures)
        options = json.dumps(chat.sampling, sort_keys=True)
        keep_it = not chat.sampling["do_sample"] and chat.min_tokens == 0 and all(p.kind == "image" for p in chat.pictures)
        ids = [int(t) for t in self.tokenizer.encode(text)]
        job.mark("template")
        entry, keep = (self.cache.take(ids, pictures, options, self.pad_id, chat.max_tokens, self.max_length)
                       if keep_it else (None, 0))
        if entry is not None:
            try:
                self._check_room(len(ids) + entry.extra)
            except APIError:
                self.cache.put(entry)
                raise
            continue_with(entry, ids, keep)
            job.mark("generator and prefill")
            generator, prompt, cached = entry.generator, len(ids) + entry.extra, keep + entry.extra
            capacity = entry.capacity
            log.info("prompt cache hit: %d of %d prompt tokens kept", cached, prompt)
        else:
            inputs = self._inputs(chat, text, job)
            physical = [int(t) for t in inputs["input_ids"].as_numpy().reshape(-1)]
            prompt, cached = len(physical), 0
            self._check_room(prompt)
            params = og.GeneratorParams(self.model)
            # A kept generator takes later turns: room for them beyond this answer (og cannot grow the buffer).
            capacity = min(self.max_length, prompt + chat.max_tokens + (KEPT_ROOM if keep_it else 0))
            params.set_search_options(**chat.sampling, max_length=capacity,
                                      **({"min_length": prompt + chat.min_tokens} if chat.min_tokens else {}))
            generator = og.Generator(self.model, params)
            generator.set_inputs(inputs)
            job.mark("generator and prefill")
            logical = collapse_pads(physical, self.pad_id)
            if keep_it and logical != ids:  # og's processor tokenized the text otherwise: a later turn cannot match
                log.warning("og's processor and tokenizer disagree on the prompt; its generator is not kept")
                keep_it = False
            entry = CachedGenerator(generator, ids, pictures, prompt - len(ids), options, capacity)
        job.emit(("ready", {"prompt_tokens": prompt, "cached_tokens": cached}))
        answer, finish = self._steps(generator, chat, job, prompt, capacity)
        completion = len(answer) + (finish == "eos")
        if keep_it and answer and finish != "error":
            # An answer cut short leaves its last token in the sequence but not in the KV cache.
            entry.kv_ids = ids + (answer if finish == "eos" else answer[:-1])
            self.cache.put(entry)
        job.emit(("done", {"finish_reason": "stop" if finish in ("eos", "stop") else "length",
                           "completion_tokens": completion}))

    def _steps(self, generator: Any, chat: Chat, job: Job, prompt: int, capacity: int) -> tuple[list[int], str]:
        """Token steps until an end-of-turn token ("eos"), a stop string ("stop"), the budget ("length") or the
        cancel flag ("cancelled")."""
        stream, stops = self.tokenizer.create_stream(), StopText(chat.stop)
        budget = min(chat.max_tokens, capacity - prompt)
        answer: list[int] = []
        while len(answer) < budget and not generator.is_done():
            if job.cancel.is_set():
                return answer, "cancelled"
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if not answer:
                job.mark("first token")
            if token in EOS_IDS:
                job.emit(("text", stops.flush()))
                return answer, "eos"
            answer.append(token)
            piece, stopped = stops.push(stream.decode(token))
            if piece:
                job.emit(("text", piece))
            if stopped:
                return answer, "stop"
        job.emit(("text", stops.flush()))
        return answer, "length"

    def _inputs(self, chat: Chat, text: str, job: Job) -> Any:
        """og's inputs for a new generator: og's processor with the pictures, or the video path's pixels."""
        og = self._og
        if any(p.kind == "video" for p in chat.pictures):
            from ..ground.video_settings import ImageSettings
            from ..runtime.video import expand_prompt, og_inputs, preprocess_image

            settings = ImageSettings.from_bundle(self.bundle)
            visuals = [decode_video(p, self.bundle) if p.kind == "video" else preprocess_image(
                decode_image(p, self.resize) if not p.ready else read_image_bytes(p.data, p.param), settings)
                for p in chat.pictures]
            return og_inputs(og, self.tokenizer, expand_prompt(text, visuals), visuals)
        pngs = [p.data if p.ready else og_png(decode_image(p, self.resize)) for p in chat.pictures]
        images = og.Images.open_bytes(*pngs) if pngs else None
        job.mark("images")
        inputs = self._processor()(text, images=images)
        job.mark("processor")
        return inputs

    def _check_room(self, tokens: int) -> None:
        if tokens >= self.max_length:
            raise APIError(400, f"the prompt is {tokens} tokens (chat template and image tokens included); the "
                           f"model's max_length is {self.max_length} (prompt and answer together)", "messages",
                           "context_length_exceeded")
