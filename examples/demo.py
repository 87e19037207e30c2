"""The README's main job: build a tiny random Qwen3-VL checkpoint offline, build its INT4 bundle,
and ask it about a generated picture through onnxruntime-genai.

    python examples/demo.py [--workdir demo] [--precision int4]

The weights are random, so the answer is random text until the trained demo model lands;
what this shows is the whole path: checkpoint -> bundle -> og processor + generator.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chat import generate  # noqa: E402

from builder_qwen3vl import BuildOptions, build  # noqa: E402
from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint  # noqa: E402


def make_picture(path: Path) -> Path:
    img = Image.new("RGB", (320, 256), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 60, 140, 160), fill="red")
    draw.rectangle((190, 80, 280, 170), fill="blue")
    img.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="build a tiny bundle and ask it about a picture")
    p.add_argument("--workdir", default="demo", type=Path)
    p.add_argument("--precision", default="int4", choices=("fp32", "fp16", "int4"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import onnxruntime_genai as og

    ckpt = args.workdir / "checkpoint"
    if not (ckpt / "config.json").exists():
        write_checkpoint(ckpt, tiny_config())
    bundle = args.workdir / f"bundle-{args.precision}"
    build(BuildOptions(input=ckpt, output=bundle, precision=args.precision, overwrite=True))
    picture = make_picture(args.workdir / "picture.png")
    question = "What colour is the circle?"
    answer = "".join(generate(og.Model(str(bundle)), [str(picture)], question, max_new_tokens=16))
    print(f"picture:  {picture}\nquestion: {question}\nanswer:   {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
