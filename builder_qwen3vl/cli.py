"""Command line: parses arguments and calls ``build`` / ``verify_bundle``; nothing else lives here.

    python -m builder_qwen3vl -i CKPT -o OUT [-p int4] [--verify]     build a bundle
    python -m builder_qwen3vl verify OUT [--static-only]             check a bundle
    python -m builder_qwen3vl serve OUT [--port 8000]                serve it as an OpenAI-compatible endpoint

Exit codes: 0 success; 2 bad input or usage (the message names the file or option), or an ``-o``
another build is writing (the message names its pid); 1 a failure while building or verifying
(including a full disk); 130 Ctrl-C; 143 SIGTERM (docs/errors.md).

``main`` is the application: it configures logging for its process (``logs.configure_logging``);
``build`` and ``verify_bundle`` leave the process as they found it, for callers from Python.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .ground.errors import BuildError, InputError
from .ground.logs import configure_logging
from .ground.vocab import EXECUTION_PROVIDERS, PRECISIONS
from .options import OWN_EXTRA_OPTIONS, BuildOptions, parse_extra_options

log = logging.getLogger("builder_qwen3vl")

VERIFY_COMMAND = "verify"
SERVE_COMMAND = "serve"
SERVE_EXTRA = 'pip install "builder-qwen3vl[serve]"'


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="builder-qwen3vl",
        description="Build an onnxruntime-genai bundle (vision, embeddings, DeepStack decoder, configs) "
        "from a Hugging Face Qwen3-VL checkpoint folder.",
        epilog=f"To check an existing bundle: python -m builder_qwen3vl {VERIFY_COMMAND} BUNDLE [--static-only]; "
        f"to serve one: python -m builder_qwen3vl {SERVE_COMMAND} BUNDLE",
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
    p.add_argument("--verify", action="store_true", help=f"run `{VERIFY_COMMAND}` on the bundle after building it")
    p.add_argument("-v", "--verbose", action="store_true", help="show og builder, onnxruntime and torch output")
    return p


def make_verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"builder-qwen3vl {VERIFY_COMMAND}",
        description="Check a bundle: files, ONNX inputs/outputs, DeepStack widths, then a short og generation "
        "on a generated image and on text only.",
    )
    p.add_argument("bundle", help="bundle folder (with genai_config.json)")
    p.add_argument("--static-only", action="store_true", help="skip the og generation (e.g. fp16 bundles on CPU)")
    p.add_argument("--max-new-tokens", type=int, default=4, help="tokens to generate per prompt (default 4)")
    p.add_argument("-v", "--verbose", action="store_true", help="show other libraries' output")
    return p


def make_serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"builder-qwen3vl {SERVE_COMMAND}",
        description="Serve a bundle as an OpenAI-compatible chat endpoint (/v1/chat/completions, /v1/models, /health; "
        f"docs/serve.md). Needs the serve extra: {SERVE_EXTRA}",
    )
    p.add_argument("bundle", help="bundle folder (with genai_config.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on /v1/ (default: no key)")
    p.add_argument("--model-name", default=None, help="the model id of /v1/models (default: the bundle folder's name)")
    p.add_argument("--max-concurrent", type=int, default=2, help="generators running at once (default 2)")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting for a generator; more get 429 (default 16)")
    p.add_argument("--cache-slots", type=int, default=4, help="generators kept for the prompt cache (default 4; 0: off)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB; more get 413 (default 32)")
    p.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (default: data: URLs only)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per og session (default: the bundle's)")
    p.add_argument("-v", "--verbose", action="store_true", help="access log and other libraries' output")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [VERIFY_COMMAND]:
        args = make_verify_parser().parse_args(argv[1:])
        configure_logging(args.verbose)
        return _guarded(lambda: _verify(Path(args.bundle), run=not args.static_only, max_new_tokens=args.max_new_tokens))
    if argv[:1] == [SERVE_COMMAND]:
        args = make_serve_parser().parse_args(argv[1:])
        configure_logging(args.verbose)
        return _guarded(lambda: _serve(args))
    args = make_parser().parse_args(argv)
    configure_logging(args.verbose)
    return _guarded(lambda: _build(args))


def _build(args: argparse.Namespace) -> int:
    from .pipeline import build

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
    out = build(options)
    if not args.verify:
        return 0
    code = _verify(out, run=True)
    if code == 0:
        log.info("bundle verified: %s; run it: python examples/chat.py -m %s --image IMAGE", out, out)
    return code


def _verify(bundle: Path, *, run: bool, max_new_tokens: int = 4) -> int:
    from .verify import verify_bundle

    report = verify_bundle(bundle, run=run, max_new_tokens=max_new_tokens)
    for line in report.lines()[:-1]:
        log.info("%s", line)
    log.info("%s", report.lines()[-1])
    report.raise_for_failure()
    return 0


def _serve(args: argparse.Namespace) -> int:
    folder = Path(args.bundle)
    if not (folder / "genai_config.json").is_file():
        raise InputError(f"{SERVE_COMMAND} {folder}: " + ("no genai_config.json (expected a bundle folder written by "
                         "builder_qwen3vl)" if folder.is_dir() else "no such bundle folder"))
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise InputError(f"{SERVE_COMMAND}: needs {e.name} (the serve extra): {SERVE_EXTRA}") from None
    from .serve.main import run, settings_from

    try:
        settings_from(args).check()
    except ValueError as e:
        raise InputError(str(e)) from None
    try:
        return run(args)
    except (ValueError, RuntimeError) as e:  # a bundle og or the bundle readers refuse: one line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{SERVE_COMMAND} {folder}: cannot load the bundle ({reason})") from None


def _guarded(action) -> int:
    """Run ``action``; turn every failure into one line and an exit code."""
    try:
        return action()
    except BuildError as e:
        log.error("error: %s", e)
        return e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted: stopped; a partial bundle, if any, was removed")
        return 130
    except Exception as e:  # an internal failure: one line by default, the traceback with -v
        log.debug("traceback", exc_info=True)
        first_line = (str(e).strip().splitlines() or [""])[0]
        log.error("internal error: %s: %s (run with -v for the traceback)", type(e).__name__, first_line)
        return 1


if __name__ == "__main__":
    sys.exit(main())
