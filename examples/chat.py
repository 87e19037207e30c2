"""Ask a Qwen3-VL bundle about one or more images with onnxruntime-genai (no PyTorch needed).

    python examples/chat.py -m BUNDLE --image cat.jpg --prompt "What is in the picture?"

Images are pre-resized the way HF's processor does (builder_qwen3vl.resize) so og's grid
matches HF's exactly; pass --no-exact-grid to hand og the original files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnxruntime_genai as og

from builder_qwen3vl.og_run import chat_prompt, greedy, load_model, resize_settings


def exact_grid_copies(paths: list[str], folder: Path, bundle: str) -> list[str]:
    """Write HF-resized copies of the images (PIL only) and return their paths."""
    from PIL import Image

    from builder_qwen3vl.resize import resize_for_og

    settings = resize_settings(bundle)
    out = []
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            target = folder / f"image{i}.png"
            resize_for_og(img.convert("RGB"), **settings).save(target)
        out.append(str(target))
    return out


def generate(model: og.Model, images: list[str], prompt: str, max_new_tokens: int = 64,
             system_prompt: str | None = None) -> Iterator[str]:
    """Stream the answer's text pieces, greedy, through og's own processor and generator."""
    tokenizer = og.Tokenizer(model)
    stream = tokenizer.create_stream()
    text = chat_prompt(tokenizer, prompt, len(images), system_prompt)
    inputs = model.create_multimodal_processor()(text, images=og.Images.open(*images) if images else None)
    for token, _ in greedy(model, inputs, max_new_tokens):
        yield stream.decode(token)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True, help="bundle folder written by builder_qwen3vl")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--prompt", default="Describe the picture.", help="the question")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--no-exact-grid", action="store_true", help="let og resize the images itself")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of each session (default: the bundle's genai_config; 0 = every physical core)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 0:
        p.error(f"--threads {args.threads}: expected an integer >= 0")
    model = load_model(args.model, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        images = args.image
        if images and not args.no_exact_grid:
            images = exact_grid_copies(images, Path(tmp), args.model)
        for piece in generate(model, images, args.prompt, args.max_new_tokens):
            print(piece, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
