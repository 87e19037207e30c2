"""The server under load: latency and throughput at 1, 2 and 4 concurrent clients, and the HTTP cost on the first token.

    python benchmarks/serve_load.py [--bundle BUNDLE --label TEXT] [--server-concurrent 1 2] [--clients 1 2 4]
                                    [--requests 12] [--max-tokens 32] [--picture-size N] [--docs docs/benchmarks.md]

Without ``--bundle`` the shipped tiny model's bundle is built into a temporary folder (as the tests build it).
For each ``--server-concurrent`` value a server (``python -m builder_qwen3vl serve``, loopback, prompt cache off)
answers ``--requests`` streamed requests per client count; each asks about its own shapes picture (drawn, or
resized to ``--picture-size`` pixels square), greedy, with a fixed answer length (``ignore_eos``, ``--max-tokens``).
Each client thread keeps one HTTP connection, as the openai client does. Time to first token (TTFT) is the first
chunk with text; total is the last.

The HTTP overhead on the first token compares, alternating request by request on the same pictures:
- served: a client holding a connection sends the PNG as a base64 ``data:`` URL (encoded before the clock starts;
  the JSON body is written inside it) and reads the stream up to the first chunk with text (``max_tokens`` 1).
  Inside: HTTP and JSON parsing, base64, the picture's checked decode and HF-grid resize, the chat template, og's
  processor, the generator and its prefill, the first token, the event loop and the SSE write.
- og in process: what a user of og does with the same PNG bytes: ``og.Images.open_bytes``, the chat template,
  og's processor, the generator (max_length prompt + 1, as the server sizes it) and its prefill, the first token
  decoded.
The two prompts must have one token count (printed); with ``--docs`` the section of docs/benchmarks.md for this
bundle is rewritten from this run. Not part of CI.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import cpu_info, write_docs_section
from serve_helpers import KEY, data_url, serving

log = logging.getLogger("serve_load")

DOCS_SECTION = "## The chat server under load (`benchmarks/serve_load.py`)"  # the shipped model's section
CLIENTS = (1, 2, 4)
# Between two first-token runs: onnxruntime's idle threads spin a while after a run, on cores the other side needs.
SETTLE_SECONDS = 0.5


class Picture:
    """One request's picture: the PNG bytes a client sends, and the question."""

    def __init__(self, png: bytes, question: str) -> None:
        self.png, self.question = png, question
        self.url = data_url(png)


def pictures(count: int, size: int | None) -> list[Picture]:
    from PIL import Image

    from builder_qwen3vl.shipped import shapes_task

    out = []
    for i in range(count):
        sample = shapes_task.make_sample(shapes_task.HELD_OUT_SEED, 100 + i)
        image = sample.image.convert("RGB")
        if size:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(Picture(buf.getvalue(), sample.question))
    return out


_local = threading.local()


def _client() -> Any:
    """This thread's HTTP client: one kept connection per client thread."""
    import httpx

    if not hasattr(_local, "client"):
        _local.client = httpx.Client(timeout=900, headers={"Authorization": f"Bearer {KEY}"})
    return _local.client


def one_request(base: str, picture: Picture, max_tokens: int) -> dict[str, float]:
    content = [{"type": "image_url", "image_url": {"url": picture.url}}, {"type": "text", "text": picture.question}]
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "stream": True, "temperature": 0,
            "max_tokens": max_tokens, "ignore_eos": True, "stream_options": {"include_usage": True}}
    client = _client()
    start, first, tokens, prompt = time.perf_counter(), None, 0, 0
    with client.stream("POST", base + "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            doc = json.loads(line[6:])
            if first is None and doc["choices"] and doc["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if doc.get("usage"):
                tokens, prompt = doc["usage"]["completion_tokens"], doc["usage"]["prompt_tokens"]
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "total": end - start, "tokens": tokens, "prompt": prompt}


def load(base: str, clients: int, batch: list[Picture], max_tokens: int) -> dict[str, float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(lambda p: one_request(base, p, max_tokens), batch))
    wall = time.perf_counter() - start
    p90 = lambda xs: sorted(xs)[min(len(xs) - 1, int(0.9 * len(xs)))]
    ttft, total = [r["ttft"] for r in runs], [r["total"] for r in runs]
    return {"clients": clients, "ttft_median": statistics.median(ttft), "ttft_p90": p90(ttft),
            "total_median": statistics.median(total), "total_p90": p90(total),
            "tokens_per_s": sum(r["tokens"] for r in runs) / wall, "requests_per_s": len(runs) / wall}


class Direct:
    """og in this process, as a user of og answers the same PNG bytes (see the module's docstring)."""

    def __init__(self, bundle: Path, threads: int | None) -> None:
        import onnxruntime_genai as og

        from builder_qwen3vl.ground.tokens import special_tokens
        from builder_qwen3vl.runtime.og_run import load_model

        self.og, self.model = og, load_model(bundle, threads)
        self.tokenizer, self.processor = og.Tokenizer(self.model), self.model.create_multimodal_processor()
        self.special = special_tokens(bundle)

    def first_token(self, picture: Picture) -> tuple[float, int]:
        """Seconds to the first token's text, and the prompt's token count."""
        from builder_qwen3vl.runtime.og_run import chat_prompt

        og = self.og
        start = time.perf_counter()
        images = og.Images.open_bytes(picture.png)
        inputs = self.processor(chat_prompt(self.tokenizer, picture.question, 1, special_tokens=self.special),
                                images=images)
        prompt = int(inputs["input_ids"].as_numpy().shape[-1])
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=prompt + 1)
        generator = og.Generator(self.model, params)
        generator.set_inputs(inputs)
        generator.generate_next_token()
        self.tokenizer.create_stream().decode(int(generator.get_next_tokens()[0]))
        return time.perf_counter() - start, prompt


def first_token_overhead(base: str, direct: Direct, batch: list[Picture]) -> dict[str, Any]:
    """Served and og-in-process first tokens, alternating picture by picture (the machine's load hits both)."""
    served, local, prompts = [], [], set()
    for picture in batch:
        time.sleep(SETTLE_SECONDS)
        run = one_request(base, picture, 1)
        time.sleep(SETTLE_SECONDS)
        seconds, prompt = direct.first_token(picture)
        served.append(run["ttft"])
        local.append(seconds)
        prompts.add((run["prompt"], prompt))
    if any(a != b for a, b in prompts):
        log.warning("served and og-in-process prompts differ in length: %s", sorted(prompts))
    pairs = [(s - d) / d * 100 for s, d in zip(served, local)]
    return {"served": statistics.median(served), "direct": statistics.median(local),
            "pair_overhead_median": statistics.median(pairs), "prompt_tokens": min(prompts)[0]}


def shipped_bundle(folder: Path) -> Path:
    from builder_qwen3vl import BuildOptions, build
    from builder_qwen3vl.shipped.assembly import shipped_checkpoint

    return build(BuildOptions(input=shipped_checkpoint(folder / "cache"), output=folder / "fp32", precision="fp32"))


def heading(label: str | None) -> str:
    return DOCS_SECTION if label is None else f"## The chat server under load: {label} (`benchmarks/serve_load.py`)"


def command(args: Any) -> str:
    parts = ["python benchmarks/serve_load.py"]
    if args.bundle is not None:
        parts += ["--bundle BUNDLE", f'--label "{args.label}"'] if args.label else ["--bundle BUNDLE"]
    parts += ["--server-concurrent", *map(str, args.server_concurrent), "--clients", *map(str, args.clients),
              f"--requests {args.requests} --max-tokens {args.max_tokens}"]
    parts += [f"--picture-size {args.picture_size}"] if args.picture_size else []
    parts += [f"--threads {args.threads}"] if args.threads is not None else []
    return " ".join(parts)


def report(rows: dict[int, list[dict[str, float]]], first: dict[str, Any], bundle: str, args: Any) -> str:
    cpu = cpu_info()
    picture = f"{args.picture_size}x{args.picture_size} pixels" if args.picture_size else "about 90x90 pixels, as drawn"
    lines = [heading(args.label), "",
             (f"`{command(args)}` on {bundle}; {cpu['model']} ({', '.join(cpu['isa']) or 'no AVX2'}, "
              f"{cpu['logical_cpus']} logical CPUs). Streamed greedy answers of {args.max_tokens} tokens, one shapes "
              f"picture per request ({picture}; {first['prompt_tokens']} prompt tokens), prompt cache off; "
              "each client keeps one connection; times in ms."), "",
             "| --max-concurrent | clients | TTFT median | TTFT p90 | total median | total p90 | tokens/s | requests/s |",
             "|---|---|---|---|---|---|---|---|"]
    for server_concurrent, results in rows.items():
        for r in results:
            lines.append(f"| {server_concurrent} | {r['clients']} | {r['ttft_median'] * 1e3:.0f} | {r['ttft_p90'] * 1e3:.0f} | "
                         f"{r['total_median'] * 1e3:.0f} | {r['total_p90'] * 1e3:.0f} | {r['tokens_per_s']:.1f} | "
                         f"{r['requests_per_s']:.2f} |")
    overhead = (first["served"] - first["direct"]) / first["direct"] * 100
    lines += ["", (f"HTTP overhead on the first token (one client, --max-concurrent {args.server_concurrent[0]}, "
                   f"{args.requests} pictures alternating served and in-process): served {first['served'] * 1e3:.1f} ms, "
                   f"og in process {first['direct'] * 1e3:.1f} ms, {overhead:+.1f} % of the medians "
                   f"({first['pair_overhead_median']:+.1f} % median of the pairs; goal: at most 5 %). Served: the "
                   "client sends the PNG base64 in a data: URL over a kept connection and reads the stream to the "
                   "first chunk with text; in between: HTTP, JSON, base64, the checked decode and HF-grid resize, "
                   "the chat template, og's processor, the prefill and first token, the event loop and the SSE write. "
                   "og in process: og.Images.open_bytes on the same PNG bytes, the chat template, og's processor, "
                   "the prefill and the first token's text.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped model's, built now)")
    p.add_argument("--label", default=None, help="the bundle's name in the report and its docs section (with --bundle)")
    p.add_argument("--server-concurrent", type=int, nargs="+", default=[1, 2], help="--max-concurrent values to run")
    p.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS), help="concurrent client counts")
    p.add_argument("--requests", type=int, default=12, help="requests per client count")
    p.add_argument("--max-tokens", type=int, default=32, help="answer length (tokens)")
    p.add_argument("--picture-size", type=int, default=None, help="resize the pictures to N x N pixels")
    p.add_argument("--threads", type=int, default=None, help="--threads of the server and of og in process")
    p.add_argument("--docs", type=Path, default=None, help="rewrite this run's section of this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle or shipped_bundle(Path(scratch))
        batch = pictures(args.requests, args.picture_size)
        rows: dict[int, list[dict[str, float]]] = {}
        first: dict[str, Any] = {}
        for concurrent in args.server_concurrent:
            extra = ["--max-concurrent", str(concurrent), "--cache-slots", "0"]
            extra += ["--threads", str(args.threads)] if args.threads is not None else []
            with serving(bundle, *extra) as server:
                load(server.base, 1, batch[:1], args.max_tokens)  # warm-up
                rows[concurrent] = []
                for clients in args.clients:
                    rows[concurrent].append(load(server.base, clients, batch, args.max_tokens))
                    log.info("--max-concurrent %d: %s", concurrent, json.dumps(rows[concurrent][-1]))
                if not first:
                    direct = Direct(bundle, args.threads)
                    direct.first_token(batch[0])  # warm-up
                    first = first_token_overhead(server.base, direct, batch)
                    del direct
                    log.info("first token: %s", json.dumps(first))
        text = report(rows, first, "the shipped model's fp32 bundle" if args.bundle is None else (args.label or bundle.name),
                      args)
    log.info("%s", text)
    if args.docs:
        write_docs_section(heading(args.label), text, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
