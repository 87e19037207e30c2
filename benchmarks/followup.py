"""A follow-up question about an already-encoded picture: its first token, against asking the whole conversation anew.

    python benchmarks/followup.py [--shape 2b] [--cache DIR] [--work DIR] [--repeats 3] [--docs docs/benchmarks.md]

The checkpoint is the released config of the shape with random weights (benchmarks/run.py writes and caches it),
built as a user builds it (``-p int4 -e cpu``). Each repeat opens a ``runtime.conversation.Conversation`` about a
448x448 picture, asks a 32-token question (time to first token: processor, vision, prefill), lets it answer 8
tokens, then asks a follow-up of about 30 new tokens (time to its first token, the generator and its KV cache
kept), and last gives a new generator the whole conversation through og's processor (the picture encoded again),
which is what a follow-up costs without the kept generator. Medians of ``--repeats``; with ``--docs`` the section
of docs/benchmarks.md is rewritten from this run. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUESTION_TOKENS, cpu_info, question_text, write_docs_section  # noqa: E402
from run import cache_root, ensure_checkpoint  # noqa: E402

DOCS_SECTION = "## A follow-up question (`benchmarks/followup.py`)"
FOLLOW_UP = "And what colour is the largest shape next to the left edge of the picture, and how big is it compared to the rest?"
ANSWER_TOKENS = 8


def cpu_kind() -> str:
    cpu = cpu_info()
    return f"{cpu['model']} ({', '.join(cpu['isa']) or 'no AVX2'}, {cpu['logical_cpus']} logical CPUs)"


def picture(width: int = 448, height: int = 448, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def first_token_seconds(tokens: Any) -> float:
    start = time.perf_counter()
    next(tokens)
    return time.perf_counter() - start


def one_round(model: Any, image: Image.Image, question: str) -> dict[str, float]:
    import onnxruntime_genai as og

    from builder_qwen3vl.runtime.conversation import Conversation
    from builder_qwen3vl.runtime.image_io import og_images

    conversation = Conversation(model, [image])
    answer = conversation.stream(question, ANSWER_TOKENS)
    first = first_token_seconds(answer)
    for _ in answer:  # the rest of the first answer
        pass
    before = conversation.length
    follow = conversation.stream(FOLLOW_UP, ANSWER_TOKENS)
    follow_up = first_token_seconds(follow)
    for _ in follow:
        pass
    new_tokens = conversation.length - before - ANSWER_TOKENS
    history = conversation.messages[:-1]
    conversation.close()  # as a user asking anew would: one KV cache at a time
    text = conversation.tokenizer.apply_chat_template(messages=json.dumps(history), add_generation_prompt=True)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=conversation.max_length)
    start = time.perf_counter()
    generator = og.Generator(model, params)
    generator.set_inputs(conversation.processor(text, images=og_images(og, [image])))
    generator.generate_next_token()
    anew = time.perf_counter() - start
    return {"first_question_s": first, "follow_up_s": follow_up, "whole_conversation_anew_s": anew,
            "follow_up_new_tokens": float(new_tokens), "prompt_tokens": float(before), "restarts": float(conversation.restarts)}


def markdown(results: dict[str, Any]) -> str:
    m = results["medians"]
    lines = [DOCS_SECTION, "",
             f"`{results['command']}` on {results['cpu']}, {results['repeats']} repeats (medians; the 2 cores otherwise idle).",
             "",
             "| figure | seconds |", "|---|---|",
             f"| first question: 448x448 picture + {QUESTION_TOKENS}-token question, to the first token | {m['first_question_s']:.2f} |",
             f"| follow-up ({m['follow_up_new_tokens']:.0f} new tokens), generator kept: to the first token | {m['follow_up_s']:.2f} |",
             f"| the same follow-up asked anew (whole conversation, picture encoded again) | {m['whole_conversation_anew_s']:.2f} |",
             "",
             f"Target for the follow-up: at most 1.5 s. The conversation held {m['prompt_tokens']:.0f} tokens before the "
             f"follow-up; restarts (the template rewriting an earlier turn): {m['restarts']:.0f}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="2b")
    p.add_argument("--cache", type=Path, default=None, help="checkpoint cache (default: benchmarks/run.py's)")
    p.add_argument("--work", type=Path, default=Path("followup-work"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--docs", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import onnxruntime_genai as og

    from builder_qwen3vl import BuildOptions, build
    from builder_qwen3vl.runtime.og_run import load_model

    checkpoint = ensure_checkpoint(args.shape, args.cache or cache_root())
    bundle = args.work / f"bundle-{args.shape}-int4"
    if not (bundle / "genai_config.json").is_file():
        build(BuildOptions(input=checkpoint, output=bundle, precision="int4"))
    model = load_model(bundle)
    tokenizer = og.Tokenizer(model)
    question = question_text(lambda s: list(tokenizer.encode(s)))
    image = picture()
    one_round(model, image, question)  # warm-up
    rounds = [one_round(model, image, question) for _ in range(args.repeats)]
    medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    results = {"command": "python benchmarks/followup.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "cpu": cpu_kind(), "repeats": args.repeats, "rounds": rounds,
               "medians": medians}
    print(json.dumps(results, indent=2))
    text = markdown(results)
    print(text)
    if args.docs:
        write_docs_section(DOCS_SECTION, text, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
