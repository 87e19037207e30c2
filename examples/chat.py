"""Ask a Qwen3-VL bundle about images or a video with onnxruntime-genai (no PyTorch needed).

    python examples/chat.py -m BUNDLE --image cat.jpg --prompt "What is in the picture?"
    python examples/chat.py -m BUNDLE --video clip.mp4 --prompt "What happens?"      # needs PyAV (pip install av)
    python examples/chat.py -m BUNDLE --video frames/ --fps 2 --prompt "What happens?"  # a folder of frames
    python examples/chat.py -m BUNDLE --image cat.jpg --interactive < questions.txt     # a conversation

With --interactive, the questions come from standard input, one per line until its end, and each answer is
printed on a line of its own (newlines inside an answer become spaces): the model loads once, the pictures are
encoded once, and each follow-up costs only its own tokens (builder_qwen3vl.runtime.conversation keeps og's
generator and its KV cache across turns).

Images are read with builder_qwen3vl.runtime.image_io (PIL: PNG, JPEG, BMP, WebP, TIFF, GIF, CMYK, 16-bit) and handed
to og as PNG bytes: og's own decoder ends the process on formats it does not know (docs/bundle.md). They are
pre-resized the way HF's processor does (builder_qwen3vl.runtime.resize) so og's grid matches HF's exactly; pass
--no-exact-grid to let og resize them itself. A video travels through og's image path as one image per frame
pair (builder_qwen3vl.runtime.video, docs/video.md); it comes first in the prompt. Special tokens typed in the
prompt (`<|image_pad|>`, `<|im_end|>`, ...) stay text (builder_qwen3vl.ground.tokens.plain_text): only --image and
--video place images. Every bad input, and a bundle naming files outside its folder, is one line on stderr
(`error: ...`) and exit 2 (docs/errors.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import onnxruntime_genai as og
from PIL import Image

from builder_qwen3vl.ground.bundle_paths import BundlePathError
from builder_qwen3vl.ground.contract import GENAI_CONFIG_FILENAME, PROCESSOR_CONFIG_FILENAME
from builder_qwen3vl.ground.errors import InputError
from builder_qwen3vl.ground.video_settings import SettingsLimitError
from builder_qwen3vl.runtime.conversation import Conversation
from builder_qwen3vl.runtime.image_io import ImageReadError, og_images, read_image
from builder_qwen3vl.runtime.og_run import chat_prompt, greedy, load_model, resize_settings
from builder_qwen3vl.runtime.resize import resize_for_og, smart_resize
from builder_qwen3vl.ground.tokens import SPECIAL_TOKENS, special_tokens

BUNDLE_FILES = (GENAI_CONFIG_FILENAME, PROCESSOR_CONFIG_FILENAME)


def read_option_image(path: str) -> Image.Image:
    """``read_image`` with the option named in its one-line error."""
    try:
        return read_image(path)
    except ImageReadError as e:
        raise ImageReadError(f"--image {e}") from None


def read_images(paths: Sequence[str], bundle: str, exact_grid: bool = True) -> list[Image.Image]:
    """Read every image (8-bit RGB; one line naming a bad file) and, with ``exact_grid``, resize it HF's way."""
    try:
        settings = resize_settings(bundle)
    except BundlePathError:
        raise
    except SettingsLimitError as e:  # names the file and the key already
        raise InputError(f"-m {bundle}: {e}") from None
    except (KeyError, StopIteration, TypeError, ValueError) as e:  # a hand-edited or foreign processor_config.json
        raise InputError(f"-m {bundle}: processor_config.json has no usable Resize step ({type(e).__name__}: {e}); "
                         "expected the one builder_qwen3vl writes") from None
    out = []
    for path in paths:
        img = read_option_image(path)
        try:  # the aspect-ratio limit HF and og share (og raises a RuntimeError mid-run): checked up front
            smart_resize(img.height, img.width)
        except ValueError as e:
            raise ImageReadError(f"--image {path}: {e}") from None
        out.append(resize_for_og(img, **settings) if exact_grid else img)
    return out


def exact_grid_copies(paths: list[str], folder: Path, bundle: str) -> list[str]:
    """Write HF-resized copies of the images (as PNG files in ``folder``) and return their paths."""
    out = []
    for i, img in enumerate(read_images(paths, bundle)):
        target = folder / f"image{i}.png"
        img.save(target)
        out.append(str(target))
    return out


def generate(model: og.Model, images: Sequence[str | Image.Image], prompt: str, max_new_tokens: int = 64,
             system_prompt: str | None = None, special: Iterable[str] = SPECIAL_TOKENS) -> Iterator[str]:
    """Stream the answer's text pieces, greedy, through og's own processor and generator.

    ``images``: paths (read with builder_qwen3vl.runtime.image_io) or PIL images; og sees only PNG bytes we wrote.
    ``special``: the bundle's special tokens (``special_tokens(bundle)``), kept as text in ``prompt``.
    A prompt longer than the bundle's search.max_length raises ValueError before the first token.
    """
    tokenizer = og.Tokenizer(model)
    stream = tokenizer.create_stream()
    text = chat_prompt(tokenizer, prompt, len(images), system_prompt, special_tokens=special)
    inputs = model.create_multimodal_processor()(text, images=og_images(og, images) if images else None)
    for token, _ in greedy(model, inputs, max_new_tokens):
        yield stream.decode(token)


def generate_video(model: og.Model, video: str, fps: float | None, images: list[str], prompt: str,
                   max_new_tokens: int = 64, bundle: str = "") -> Iterator[str]:
    """Stream the answer about a video (then any images): frames sampled and prompt written as HF's processor
    does, with the checkpoint's video settings the bundle carries (video_preprocessor_config.json)."""
    from builder_qwen3vl.runtime.video import (ImageSettings, VideoSettings, expand_prompt, og_inputs, preprocess_image,
                                       preprocess_video, read_frames)

    frames, source_fps = read_frames(video, fps)
    visuals = [preprocess_video(frames, source_fps, VideoSettings.from_bundle(bundle))]
    image_settings = ImageSettings.from_bundle(bundle)
    visuals += [preprocess_image(read_image(path), image_settings) for path in images]
    tokenizer = og.Tokenizer(model)
    stream = tokenizer.create_stream()
    text = chat_prompt(tokenizer, prompt, len(images), num_videos=1, special_tokens=special_tokens(bundle))
    text = expand_prompt(text, visuals)
    for token, _ in greedy(model, og_inputs(og, tokenizer, text, visuals), max_new_tokens):
        yield stream.decode(token)


def converse(model: og.Model, images: Sequence[str | Image.Image], questions: Iterable[str], max_new_tokens: int = 64,
             special: Iterable[str] = SPECIAL_TOKENS) -> Iterator[str]:
    """One line per answer to each non-blank question, in one conversation about ``images`` (og's generator kept)."""
    conversation = Conversation(model, images, special_tokens=special)
    for line in questions:
        question = line.rstrip("\r\n")
        if question.strip():
            yield "".join(piece for _, piece in conversation.stream(question, max_new_tokens)).replace("\n", " ")


def check_args(args: argparse.Namespace) -> None:
    """Options and the bundle folder, before anything is loaded (InputError: one line)."""
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens {args.max_new_tokens}: expected an integer >= 1")
    if args.threads is not None and args.threads < 0:
        raise InputError(f"--threads {args.threads}: expected an integer >= 0")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise InputError(f"--fps {args.fps:g}: expected frames per second > 0")
    if args.interactive and args.video:
        raise InputError("--interactive: takes pictures (--image), not --video; ask about a video one question at a time")
    folder = Path(args.model)
    if not folder.is_dir():
        raise InputError(f"-m {folder}: " + ("is a file, expected a bundle folder" if folder.exists()
                                            else "no such bundle folder"))
    for name in BUNDLE_FILES:
        if not (folder / name).is_file():
            raise InputError(f"-m {folder}: no {name} (expected a bundle folder written by builder_qwen3vl)")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.video:
        for path in args.image:  # generate_video reads them again; here a bad one is one line before the model loads
            read_option_image(path)
    else:
        images = read_images(args.image, args.model, exact_grid=not args.no_exact_grid)
    try:
        model = load_model(args.model, args.threads)
    except RuntimeError as e:  # a folder that looks like a bundle but is not one og can load
        reason = str(e).splitlines()[0] if str(e) else "RuntimeError"
        raise InputError(f"-m {args.model}: onnxruntime-genai cannot load the bundle ({reason}); "
                         f"check it with: python -m builder_qwen3vl verify {args.model}") from None
    if args.interactive:
        for answer in converse(model, images, sys.stdin, args.max_new_tokens, special=special_tokens(args.model)):
            print(answer, flush=True)
        return 0
    if args.video:
        pieces = generate_video(model, args.video, args.fps, args.image, args.prompt, args.max_new_tokens, args.model)
    else:
        pieces = generate(model, images, args.prompt, args.max_new_tokens, special=special_tokens(args.model))
    for piece in pieces:  # a prompt over search.max_length raises before the first piece
        print(piece, end="", flush=True)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True, help="bundle folder written by builder_qwen3vl")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--video", default=None, help="a video file (needs PyAV) or a folder of frame images")
    p.add_argument("--fps", type=float, default=None, help="frames per second of --video's source (required for a folder)")
    p.add_argument("--prompt", default="Describe the picture.", help="the question")
    p.add_argument("--max-new-tokens", type=int, default=64, help="at most this many answer tokens (>= 1)")
    p.add_argument("--interactive", action="store_true",
                   help="questions from standard input, one per line; one answer line each (a conversation)")
    p.add_argument("--no-exact-grid", action="store_true", help="let og resize the images itself")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of each session (default: the bundle's genai_config; 0 = every physical core)")
    args = p.parse_args(argv)
    try:
        return run(args)
    except (InputError, ValueError) as e:
        # Bad input (images, frames, options, bundle folder, a prompt too long): one line, exit 2. ValueError
        # covers what builder_qwen3vl.runtime.video and og_run.greedy raise for the input they are given, and
        # BundlePathError (a bundle naming a file outside its folder) what the bundle readers raise.
        message = f"-m {args.model}: {e}" if isinstance(e, BundlePathError) else str(e)
        print("error: " + " ".join(message.splitlines()), file=sys.stderr)  # one line, whatever the message holds
        return 2


if __name__ == "__main__":
    sys.exit(main())
