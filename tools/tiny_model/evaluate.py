"""Held-out accuracy of the tiny trained Qwen3-VL through HF transformers and through og bundles.

    python tools/tiny_model/evaluate.py --n 300 [--seed N] [--workdir DIR] [--json FILE] \
        [--variant NAME=PRECISION[:k=v,k=v]] ... [--hf-only] [--checkpoint DIR] [--model moe-twin]

``--model moe-twin`` scores the MoE twin of the checkpoint instead (tiny_model.moe_twin: every expert a
copy of the trained dense MLP, a random router; written into the workdir), HF side through
``Qwen3VLMoeForConditionalGeneration``; ``--json`` then also records "model" and "moe_twin" (its settings).

Reference (a): HF ``Qwen3VLForConditionalGeneration`` (the class config.json names) fp32, greedy, on
inputs built here: the chat template with ``<|image_pad|>`` expanded to t*h*w/4 per grid and HF's PIL image processor
for pixel_values (encoding.Encoder, the same path as training). Each og variant is a bundle
built by ``builder_qwen3vl.build`` and run through og's own processor and generator (greedy),
with each picture pre-resized by ``resize_for_og`` so og's grid equals HF's; the script also
counts prompts whose og input_ids differ from HF's (expected: 0).

Reported per variant: exact-match accuracy (per question kind too) and agreement with (a); ``--json``
writes {"checkpoint", "n", "seed", "results": [{"name", "command", "accuracy", "agreement_with_hf",
"per_kind", "prompt_mismatches", "seconds"}, ...]}.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder_qwen3vl.ground.vocab import QWEN3_VL_ARCHITECTURE, QWEN3_VL_MOE_ARCHITECTURE

if __package__ in (None, ""):  # run as a file: tools/ on the path makes this folder the package tiny_model
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from builder_qwen3vl.shipped import shapes_task  # noqa: E402
from builder_qwen3vl.shipped.assembly import shipped_checkpoint  # noqa: E402
from builder_qwen3vl.ground.tokens import EOS_IDS  # noqa: E402
from tiny_model.encoding import Encoder, collate  # noqa: E402

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 4  # answers are one word + <|im_end|>


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str
    extra_options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """``NAME=PRECISION[:k=v,k=v]``, e.g. ``int4-b32=int4:int4_block_size=32``."""
        name, sep, rest = spec.partition("=")
        if not sep or not rest:
            raise ValueError(f"--variant '{spec}': expected NAME=PRECISION[:key=value,...]")
        precision, _, opts = rest.partition(":")
        extra = dict(item.split("=", 1) for item in opts.split(",") if item) if opts else {}
        return cls(name, precision, extra)

    def describe(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.extra_options.items())
        return f"-p {self.precision}" + (f" --extra_options {opts}" if opts else "")


DEFAULT_VARIANTS = (
    Variant("og fp32", "fp32"),
    Variant("og int4 (vision qint8, default)", "int4"),
    Variant("og int4, vision int8 MatMulNBits", "int4", {"vision_precision": "int8"}),
    Variant("og int4, vision fp32", "int4", {"vision_precision": "fp32"}),
    Variant("og int4, vision int4", "int4", {"vision_precision": "int4"}),
)


def normalise(text: str) -> str:
    return text.strip().strip(".").lower()


# --------------------------------------------------------------------------- HF side


HF_CLASSES = (QWEN3_VL_ARCHITECTURE, QWEN3_VL_MOE_ARCHITECTURE)


def load_hf(checkpoint: Path) -> Any:
    """The checkpoint in the HF class its config.json names (dense or MoE Qwen3-VL), fp32, eager attention."""
    import torch
    import transformers

    architecture = json.loads((checkpoint / "config.json").read_text())["architectures"][0]
    if architecture not in HF_CLASSES:
        raise ValueError(f"{checkpoint}: architecture '{architecture}', expected one of {', '.join(HF_CLASSES)}")
    model = getattr(transformers, architecture).from_pretrained(str(checkpoint), dtype=torch.float32,
                                                                 attn_implementation="eager")
    return model.eval()


def hf_answer(model: Any, encoder: Encoder, sample: shapes_task.Sample) -> tuple[str, list[int]]:
    """Greedy answer text and the prompt ids HF saw."""
    import torch

    example = encoder.encode(sample.image, sample.question)
    batch = collate([example])
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, pad_token_id=EOS_IDS[1],
                             eos_token_id=list(EOS_IDS), top_k=None, top_p=None, temperature=None)
    new = out[0, batch["input_ids"].shape[1]:].tolist()
    return encoder.tokenizer.decode(new, skip_special_tokens=True), example["input_ids"]


# --------------------------------------------------------------------------- og side


class OgRunner:
    """One bundle through og's processor and generator, greedy, batch 1."""

    def __init__(self, bundle: Path) -> None:
        import onnxruntime_genai as og

        from builder_qwen3vl.runtime.og_run import load_model, resize_settings

        self.og = og
        self.model = load_model(bundle)
        self.tokenizer = og.Tokenizer(self.model)
        self.processor = self.model.create_multimodal_processor()
        self.resize = resize_settings(bundle)

    def prompt(self, question: str) -> str:
        from builder_qwen3vl.runtime.og_run import chat_prompt

        return chat_prompt(self.tokenizer, question, num_images=1)

    def answer(self, sample: shapes_task.Sample) -> tuple[str, list[int]]:
        from builder_qwen3vl.runtime.og_run import greedy
        from builder_qwen3vl.runtime.resize import resize_for_og

        png = io.BytesIO()
        resize_for_og(sample.image, **self.resize).save(png, format="PNG")
        inputs = self.processor(self.prompt(sample.question), images=self.og.Images.open_bytes(png.getvalue()))
        prompt_ids = inputs["input_ids"].as_numpy()[0].tolist()
        new = [token for token, _ in greedy(self.model, inputs, MAX_NEW_TOKENS)]
        text = self.tokenizer.decode([t for t in new if t not in EOS_IDS])
        return text, prompt_ids


def build_variant(checkpoint: Path, workdir: Path, variant: Variant) -> Path:
    from builder_qwen3vl import BuildOptions, build

    slug = "".join(c if c.isalnum() else "_" for c in variant.name)
    out = workdir / f"bundle-{slug}"
    build(BuildOptions(input=checkpoint, output=out, precision=variant.precision,
                       extra_options=dict(variant.extra_options), overwrite=True))
    return out


# --------------------------------------------------------------------------- scoring


@dataclass
class Scores:
    name: str
    command: str
    answers: list[str]
    correct: list[bool]
    kinds: list[str]
    agree_with_hf: list[bool] | None = None
    prompt_mismatches: int = 0
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)

    @property
    def agreement(self) -> float | None:
        return None if self.agree_with_hf is None else sum(self.agree_with_hf) / len(self.agree_with_hf)

    def per_kind(self) -> dict[str, float]:
        out = {}
        for kind in shapes_task.QUESTION_KINDS:
            hits = [c for c, k in zip(self.correct, self.kinds) if k == kind]
            if hits:
                out[kind] = sum(hits) / len(hits)
        return out

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "command": self.command, "accuracy": round(self.accuracy, 4),
                "agreement_with_hf": None if self.agreement is None else round(self.agreement, 4),
                "per_kind": {k: round(v, 4) for k, v in self.per_kind().items()},
                "prompt_mismatches": self.prompt_mismatches, "seconds": round(self.seconds, 1)}


def score_hf(checkpoint: Path, samples: list[shapes_task.Sample]) -> tuple[Scores, list[list[int]]]:
    start = time.perf_counter()
    model, encoder = load_hf(checkpoint), Encoder.for_checkpoint(checkpoint)
    answers, prompts = [], []
    for s in samples:
        text, ids = hf_answer(model, encoder, s)
        answers.append(normalise(text))
        prompts.append(ids)
    correct = [a == s.answer for a, s in zip(answers, samples)]
    scores = Scores("HF transformers fp32", "transformers fp32 greedy", answers, correct, [s.kind for s in samples],
                    seconds=time.perf_counter() - start)
    return scores, prompts


def score_og(bundle: Path, variant: Variant, samples: list[shapes_task.Sample], reference: Scores,
             reference_prompts: list[list[int]]) -> Scores:
    start = time.perf_counter()
    runner = OgRunner(bundle)
    answers, mismatches = [], 0
    for s, ref_ids in zip(samples, reference_prompts):
        text, ids = runner.answer(s)
        answers.append(normalise(text))
        mismatches += ids != ref_ids
    correct = [a == s.answer for a, s in zip(answers, samples)]
    agree = [a == r for a, r in zip(answers, reference.answers)]
    return Scores(variant.name, variant.describe(), answers, correct, [s.kind for s in samples], agree, mismatches,
                  time.perf_counter() - start)


def evaluate(checkpoint: Path, n: int, workdir: Path, variants: tuple[Variant, ...] = DEFAULT_VARIANTS,
             seed: int = shapes_task.HELD_OUT_SEED) -> list[Scores]:
    """Score HF fp32 and every og variant on ``n`` held-out questions; the first entry is HF."""
    samples = shapes_task.make_samples(seed, n)
    reference, prompts = score_hf(checkpoint, samples)
    log.info("%s: accuracy %.4f", reference.name, reference.accuracy)
    results = [reference]
    for variant in variants:
        bundle = build_variant(checkpoint, workdir, variant)
        scores = score_og(bundle, variant, samples, reference, prompts)
        log.info("%s: accuracy %.4f, agreement with HF %.4f, prompt mismatches %d", scores.name, scores.accuracy,
                 scores.agreement, scores.prompt_mismatches)
        results.append(scores)
    return results


def markdown_table(results: list[Scores]) -> str:
    kinds = shapes_task.QUESTION_KINDS
    lines = ["| variant | build options | accuracy | agreement with HF | " + " | ".join(kinds) + " |",
             "|---|---|---|---|" + "---|" * len(kinds)]
    for r in results:
        per_kind = r.per_kind()
        agree = "-" if r.agreement is None else f"{100 * r.agreement:.1f}%"
        lines.append(f"| {r.name} | `{r.command}` | {100 * r.accuracy:.1f}% | {agree} | "
                     + " | ".join(f"{100 * per_kind.get(k, float('nan')):.1f}%" for k in kinds) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="held-out accuracy of the tiny trained Qwen3-VL, HF vs og bundles")
    p.add_argument("--n", type=int, default=300, help="number of held-out questions")
    p.add_argument("--seed", type=int, default=shapes_task.HELD_OUT_SEED, help="held-out sample stream")
    p.add_argument("--workdir", type=Path, default=Path("eval_bundles"), help="where bundles are built")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="default: the shipped trained model (builder_qwen3vl.shipped)")
    p.add_argument("--model", choices=("dense", "moe-twin"), default="dense",
                   help="moe-twin: the MoE twin of --checkpoint (tiny_model.moe_twin), written into the workdir")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=PRECISION[:key=value,...] (og/builder extra options); replaces the default variants")
    p.add_argument("--hf-only", action="store_true", help="score HF transformers only (no bundles)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    # The builder's quantizers log one line per node at INFO on the root logger; keep only ours.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    for name in (__name__, "builder_qwen3vl.shipped.assembly"):
        logging.getLogger(name).setLevel(logging.INFO)
    checkpoint = args.checkpoint or shipped_checkpoint(args.cache_dir)
    extra: dict[str, Any] = {}
    if args.model == "moe-twin":
        from tiny_model.moe_twin import TWIN_DEFAULTS, write_moe_twin

        checkpoint = write_moe_twin(checkpoint, args.workdir / "moe-twin-checkpoint", **TWIN_DEFAULTS)
        extra = {"model": args.model, "moe_twin": TWIN_DEFAULTS}
    variants = () if args.hf_only else tuple(Variant.parse(v) for v in args.variant) or DEFAULT_VARIANTS
    results = evaluate(checkpoint, args.n, args.workdir, variants, args.seed)
    print(markdown_table(results))
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(checkpoint), "n": args.n, "seed": args.seed, **extra,
                                         "results": [r.summary() for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
