"""The README's main job: build the INT4 bundle of a tiny *trained* Qwen3-VL and ask it about a
generated picture through onnxruntime-genai.

    python examples/demo.py [--workdir demo] [--precision int4] [--index 0]

The model (about 3.5M parameters besides the real 151,936-row embedding table) was trained on a
synthetic shapes task (builder_qwen3vl.testing.shapes_task): coloured circles, squares and
triangles, asked about colour, count, presence and left/right order. The first run trains it on
CPU (about 40 minutes, one core) and caches it in $BUILDER_QWEN3VL_CACHE or ~/.cache/builder_qwen3vl; later
runs reuse it. The picture comes from the held-out stream, never seen in training.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The tiny model's config starts from ../shared/reference beside this checkout. The testing helpers find
# it from their own path only in an editable install; the README's `pip install .` puts them elsewhere.
os.environ.setdefault("BUILDER_QWEN3VL_SHARED", str(Path(__file__).resolve().parents[2] / "shared"))

from chat import exact_grid_copies, generate  # noqa: E402

from builder_qwen3vl import BuildOptions, build  # noqa: E402
from builder_qwen3vl.testing import shapes_task  # noqa: E402
from builder_qwen3vl.testing.train_tiny import trained_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="build the tiny trained model's bundle and ask it about a picture")
    p.add_argument("--workdir", default="demo", type=Path)
    p.add_argument("--precision", default="int4", choices=("fp32", "fp16", "int4"))
    p.add_argument("--index", type=int, default=0, help="which held-out picture/question to use")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import onnxruntime_genai as og

    ckpt = trained_checkpoint()
    bundle = args.workdir / f"bundle-{args.precision}"
    build(BuildOptions(input=ckpt, output=bundle, precision=args.precision, overwrite=True))

    sample = shapes_task.make_sample(shapes_task.HELD_OUT_SEED, args.index)
    picture = args.workdir / f"picture-{args.index}.png"
    sample.image.save(picture)
    with tempfile.TemporaryDirectory() as tmp:
        # Pre-resize the HF way so og's grid is the one the model was trained on.
        images = exact_grid_copies([str(picture)], Path(tmp), bundle / "processor_config.json")
        answer = "".join(generate(og.Model(str(bundle)), images, sample.question, max_new_tokens=8)).strip()
    print(f"picture:  {picture} ({sample.image.width}x{sample.image.height})")
    print(f"question: {sample.question}")
    print(f"answer:   {answer}")
    print(f"expected: {sample.answer} ({'correct' if answer.lower().strip('.') == sample.answer else 'wrong'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
