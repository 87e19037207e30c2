"""Command line: parses arguments and calls ``build``; nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import sys

from .build import build
from .errors import BuildError
from .options import EXECUTION_PROVIDERS, OWN_EXTRA_OPTIONS, PRECISIONS, BuildOptions, parse_extra_options

log = logging.getLogger("builder_qwen3vl")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="builder-qwen3vl",
        description="Build an onnxruntime-genai bundle (vision, embeddings, DeepStack decoder, configs) "
        "from a Hugging Face Qwen3-VL checkpoint folder.",
    )
    p.add_argument("-i", "--input", required=True, help="HF checkpoint folder (config.json, safetensors, tokenizer)")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("-p", "--precision", default="int4", choices=PRECISIONS, help="decoder precision (default int4)")
    p.add_argument("-e", "--execution_provider", default="cpu", choices=EXECUTION_PROVIDERS, help="target EP (default cpu)")
    p.add_argument("-c", "--cache_dir", default=None, help="scratch folder for the og builder")
    p.add_argument(
        "--extra_options", nargs="+", metavar="KEY=VALUE", default=[],
        help="options of onnxruntime-genai's model builder, same spelling (e.g. block_size=32 accuracy_level=4), "
        "plus ours: " + ", ".join(f"{k}={'|'.join(v or ('...',))}" for k, v in OWN_EXTRA_OPTIONS.items())
        + ". Unknown keys are rejected with the full list.",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("-v", "--verbose", action="store_true", help="show og builder and onnxruntime output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    # Our steps at INFO; other libraries (og builder, onnxruntime quantizer, torch export) only with -v.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        options = BuildOptions(
            input=args.input,
            output=args.output,
            precision=args.precision,
            execution_provider=args.execution_provider,
            cache_dir=args.cache_dir,
            extra_options=parse_extra_options(args.extra_options),
            overwrite=args.overwrite,
            verbose=args.verbose,
        )
        build(options)
    except BuildError as e:
        log.error("error: %s", e)
        return e.exit_code
    except Exception as e:  # an internal failure: one line by default, the traceback with -v
        log.debug("traceback", exc_info=True)
        log.error("internal error: %s: %s (run with -v for the traceback)", type(e).__name__, e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted: no bundle written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
