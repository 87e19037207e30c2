"""Ask a Qwen3-VL bundle about images or a video with onnxruntime-genai (no PyTorch needed).

    python examples/chat.py -m BUNDLE --image cat.jpg --prompt "What is in the picture?"
    python examples/chat.py -m BUNDLE --video clip.mp4 --prompt "What happens?"      # needs PyAV (pip install av)
    python examples/chat.py -m BUNDLE --video frames/ --fps 2 --prompt "What happens?"  # a folder of frames

Images are pre-resized the way HF's processor does (builder_qwen3vl.resize) so og's grid
matches HF's exactly; pass --no-exact-grid to hand og the original files. A video travels through og's
image path as one image per frame pair (builder_qwen3vl.video, docs/video.md); it comes first in the prompt.
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


def generate_video(model: og.Model, video: str, fps: float | None, images: list[str], prompt: str,
                   max_new_tokens: int = 64, bundle: str = "") -> Iterator[str]:
    """Stream the answer about a video (then any images): frames sampled and prompt written as HF's processor does."""
    from PIL import Image

    from builder_qwen3vl.tokens import IMAGE_TAG
    from builder_qwen3vl.video import VIDEO_TAG, expand_prompt, og_inputs, preprocess_image, preprocess_video, read_frames

    frames, source_fps = read_frames(video, fps)
    visuals = [preprocess_video(frames, source_fps)]
    resize = resize_settings(bundle)
    for path in images:
        with Image.open(path) as img:
            visuals.append(preprocess_image(img.convert("RGB"), resize["min_pixels"], resize["max_pixels"]))
    tokenizer = og.Tokenizer(model)
    stream = tokenizer.create_stream()
    text = expand_prompt(chat_prompt(tokenizer, VIDEO_TAG + IMAGE_TAG * len(images) + prompt), visuals)
    for token, _ in greedy(model, og_inputs(og, tokenizer, text, visuals), max_new_tokens):
        yield stream.decode(token)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True, help="bundle folder written by builder_qwen3vl")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--video", default=None, help="a video file (needs PyAV) or a folder of frame images")
    p.add_argument("--fps", type=float, default=None, help="frames per second of --video's source (required for a folder)")
    p.add_argument("--prompt", default="Describe the picture.", help="the question")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--no-exact-grid", action="store_true", help="let og resize the images itself")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of each session (default: the bundle's genai_config; 0 = every physical core)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 0:
        p.error(f"--threads {args.threads}: expected an integer >= 0")
    model = load_model(args.model, args.threads)
    if args.video:
        try:
            for piece in generate_video(model, args.video, args.fps, args.image, args.prompt, args.max_new_tokens, args.model):
                print(piece, end="", flush=True)
        except ValueError as e:  # unreadable video, missing --fps: one line, exit 2
            print(f"error: {e}", file=sys.stderr)
            return 2
        print()
        return 0
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
