"""The server under load: latency and throughput at 1, 2 and 4 concurrent clients, and the HTTP cost on the first token.

    python benchmarks/serve_load.py [--bundle BUNDLE] [--server-concurrent 1 2] [--requests 12] [--docs docs/benchmarks.md]

Without ``--bundle`` the shipped tiny model's bundle is built into a temporary folder (as the tests build it).
For each ``--server-concurrent`` value a server (``python -m builder_qwen3vl serve``, loopback) answers
``--requests`` streamed requests per client count; each asks about its own shapes picture, greedy, with a fixed
answer length (``ignore_eos``, ``--max-tokens``). Time to first token (TTFT) is the first chunk with text; total is
the last. The HTTP overhead compares the server's TTFT at one client with og called directly in this process on the
same prompts (processor, generator, first token). With ``--docs`` the section of docs/benchmarks.md is rewritten
from this run. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import cpu_info, write_docs_section
from serve_helpers import KEY, ask, serving

DOCS_SECTION = "## The chat server under load (`benchmarks/serve_load.py`)"
CLIENTS = (1, 2, 4)


def samples(count: int) -> list[Any]:
    from builder_qwen3vl.shipped import shapes_task

    return [shapes_task.make_sample(shapes_task.HELD_OUT_SEED, 100 + i) for i in range(count)]


def one_request(base: str, sample: Any, max_tokens: int) -> dict[str, float]:
    import httpx

    body = {"model": "m", "messages": [ask(sample.image, sample.question)], "stream": True, "temperature": 0,
            "max_tokens": max_tokens, "ignore_eos": True, "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            doc = json.loads(line[6:])
            if first is None and doc["choices"] and doc["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if doc.get("usage"):
                tokens = doc["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "total": end - start, "tokens": tokens}


def load(base: str, clients: int, pictures: list[Any], max_tokens: int) -> dict[str, float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(lambda s: one_request(base, s, max_tokens), pictures))
    wall = time.perf_counter() - start
    p90 = lambda xs: sorted(xs)[min(len(xs) - 1, int(0.9 * len(xs)))]
    ttft, total = [r["ttft"] for r in runs], [r["total"] for r in runs]
    return {"clients": clients, "ttft_median": statistics.median(ttft), "ttft_p90": p90(ttft),
            "total_median": statistics.median(total), "total_p90": p90(total),
            "tokens_per_s": sum(r["tokens"] for r in runs) / wall, "requests_per_s": len(runs) / wall}


def direct_ttft(bundle: Path, pictures: list[Any]) -> float:
    """og in this process on the server's prompts: chat template, pre-resized picture, processor, first token."""
    import onnxruntime_genai as og

    from builder_qwen3vl.ground.tokens import special_tokens
    from builder_qwen3vl.runtime.image_io import og_images
    from builder_qwen3vl.runtime.og_run import chat_prompt, load_model, resize_settings
    from builder_qwen3vl.runtime.resize import resize_for_og

    model = load_model(bundle)
    tokenizer, processor = og.Tokenizer(model), model.create_multimodal_processor()
    special, resize = special_tokens(bundle), resize_settings(bundle)
    times = []
    for sample in pictures:
        start = time.perf_counter()
        image = resize_for_og(sample.image.convert("RGB"), **resize)
        inputs = processor(chat_prompt(tokenizer, sample.question, 1, special_tokens=special),
                           images=og_images(og, [image]))
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=int(params.get_search_options()["max_length"]))
        generator = og.Generator(model, params)
        generator.set_inputs(inputs)
        generator.generate_next_token()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def shipped_bundle(folder: Path) -> Path:
    from builder_qwen3vl import BuildOptions, build
    from builder_qwen3vl.shipped.assembly import shipped_checkpoint

    return build(BuildOptions(input=shipped_checkpoint(folder / "cache"), output=folder / "fp32", precision="fp32"))


def report(rows: dict[int, list[dict[str, float]]], direct: float, served: float, bundle: str, args: Any) -> str:
    cpu = cpu_info()
    lines = [DOCS_SECTION, "",
             (f"`python benchmarks/serve_load.py --requests {args.requests} --max-tokens {args.max_tokens}` on {bundle}; "
              f"{cpu['model']} ({', '.join(cpu['isa']) or 'no AVX2'}, {cpu['logical_cpus']} logical CPUs). Streamed "
              f"greedy answers of {args.max_tokens} tokens, one shapes picture per request; times in ms."), "",
             "| --max-concurrent | clients | TTFT median | TTFT p90 | total median | total p90 | tokens/s | requests/s |",
             "|---|---|---|---|---|---|---|---|"]
    for server_concurrent, results in rows.items():
        for r in results:
            lines.append(f"| {server_concurrent} | {r['clients']} | {r['ttft_median'] * 1e3:.0f} | {r['ttft_p90'] * 1e3:.0f} | "
                         f"{r['total_median'] * 1e3:.0f} | {r['total_p90'] * 1e3:.0f} | {r['tokens_per_s']:.0f} | "
                         f"{r['requests_per_s']:.2f} |")
    overhead = (served - direct) / direct * 100
    lines += ["", (f"HTTP overhead on the first token (one client): served {served * 1e3:.1f} ms, og in process "
                   f"{direct * 1e3:.1f} ms, {overhead:+.1f} % (goal: at most 5 %).")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped model's, built now)")
    p.add_argument("--server-concurrent", type=int, nargs="+", default=[1, 2], help="--max-concurrent values to run")
    p.add_argument("--requests", type=int, default=12, help="requests per client count")
    p.add_argument("--max-tokens", type=int, default=32, help="answer length (tokens)")
    p.add_argument("--threads", type=int, default=None, help="--threads of the server")
    p.add_argument("--docs", type=Path, default=None, help="rewrite this run's section of this file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle or shipped_bundle(Path(scratch))
        pictures = samples(args.requests)
        rows: dict[int, list[dict[str, float]]] = {}
        served = 0.0
        for concurrent in args.server_concurrent:
            extra = ["--max-concurrent", str(concurrent), "--cache-slots", "0"]
            extra += ["--threads", str(args.threads)] if args.threads is not None else []
            with serving(bundle, *extra) as server:
                load(server.base, 1, pictures[:2], args.max_tokens)  # warm-up
                rows[concurrent] = [load(server.base, c, pictures, args.max_tokens) for c in CLIENTS]
                ttft_one = [one_request(server.base, s, 1)["ttft"] for s in pictures]
                served = served or statistics.median(ttft_one)
            print(json.dumps(rows[concurrent], indent=1))
        direct = direct_ttft(bundle, pictures)
        text = report(rows, direct, served, "the shipped model's fp32 bundle" if args.bundle is None else bundle.name, args)
    print(text)
    if args.docs:
        write_docs_section(DOCS_SECTION, text, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
