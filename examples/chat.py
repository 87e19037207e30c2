"""Ask a Qwen3-VL bundle about one or more images with onnxruntime-genai (no PyTorch needed).

    python examples/chat.py -m BUNDLE --image cat.jpg --prompt "What is in the picture?"

Images are pre-resized the way HF's processor does (builder_qwen3vl.resize) so og's grid
matches HF's exactly; pass --no-exact-grid to hand og the original files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnxruntime_genai as og

from builder_qwen3vl.tokens import IMAGE_TAG


def exact_grid_copies(paths: list[str], folder: Path, processor_config: Path) -> list[str]:
    """Write HF-resized copies of the images (PIL only) and return their paths."""
    from PIL import Image

    from builder_qwen3vl.resize import resize_for_og

    resize = next(t["operation"]["attrs"] for t in json.loads(processor_config.read_text())["processor"]["transforms"]
                  if t["operation"]["type"] == "Resize")
    out = []
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            resized = resize_for_og(img.convert("RGB"), patch_size=resize["patch_size"], merge_size=resize["merge_size"],
                                    min_pixels=resize["min_pixels"], max_pixels=resize["max_pixels"])
            target = folder / f"image{i}.png"
            resized.save(target)
        out.append(str(target))
    return out


def load_model(bundle: str, threads: int | None = None) -> og.Model:
    """og.Model for ``bundle``; ``threads`` overrides the intra-op thread count the bundle's
    genai_config gives its three sessions (0 there: onnxruntime's default, every physical core)."""
    config = og.Config(bundle)
    if threads is not None:
        session = {"session_options": {"intra_op_num_threads": threads}}
        config.overlay(json.dumps({"model": {"decoder": session, "embedding": session, "vision": session}}))
    return og.Model(config)


def generate(model: og.Model, images: list[str], prompt: str, max_new_tokens: int = 64,
             system_prompt: str | None = None) -> Iterator[str]:
    """Stream the answer's text pieces, greedy, through og's own processor and generator."""
    tokenizer = og.Tokenizer(model)
    stream = tokenizer.create_stream()
    processor = model.create_multimodal_processor()
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": IMAGE_TAG * len(images) + prompt})
    text = tokenizer.apply_chat_template(messages=json.dumps(messages), add_generation_prompt=True)
    inputs = processor(text, images=og.Images.open(*images) if images else None)
    prompt_tokens = inputs["input_ids"].as_numpy().shape[-1]
    params = og.GeneratorParams(model)
    # A tight max_length: og sizes the shared KV buffers by it (context_length would be 262144 for 2B).
    params.set_search_options(do_sample=False, max_length=prompt_tokens + max_new_tokens)
    generator = og.Generator(model, params)
    generator.set_inputs(inputs)
    while not generator.is_done():
        generator.generate_next_token()
        yield stream.decode(generator.get_next_tokens()[0])


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
            images = exact_grid_copies(images, Path(tmp), Path(args.model) / "processor_config.json")
        for piece in generate(model, images, args.prompt, args.max_new_tokens):
            print(piece, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
