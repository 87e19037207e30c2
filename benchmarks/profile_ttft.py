"""Where the first token's time goes: onnxruntime profiles of the vision encoder and of the prompt's prefill,
op type by op type, against this CPU's measured GEMM peaks.

    python benchmarks/profile_ttft.py --bundle BUNDLE [--threads 2] [--calls 3] [--json out.json] [--docs docs/benchmarks.md]

For each benchmark image (448x448 and 1000x667 at HF's grid) the vision encoder runs on random pixel rows of that
grid, and model.onnx runs the prefill of a prompt of that image's length (image tokens + the chat template and a
32-token question) the way og drives it on CPU (benchmarks/measure_onnx.py's ``PlainDecoder``: one KV buffer per
layer, GroupQueryAttention). Each session has the bundle's own session options' thread count and onnxruntime's
profiler; the first call is a warm-up, the profiled time is the mean of ``--calls`` more. Per op type: ms per call,
share, and for the GEMM kinds the tera-operations done (2*M*K*N from each node's recorded shapes) and GOP/s,
against the best of the same kernel measured on this CPU in the same run at the same shapes
(benchmarks/gemm_limits.py's single-node models). Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IMAGE_SIZES, cpu_info, random_pixel_values, write_docs_section  # noqa: E402
from measure_onnx import OG_VISION_OUTPUTS, PlainDecoder, _session  # noqa: E402

from builder_qwen3vl.runtime.resize import hf_grid  # noqa: E402

log = logging.getLogger("profile_ttft")
DOCS_SECTION = "## Where the first token's time goes (`benchmarks/profile_ttft.py`)"
TEMPLATE_AND_QUESTION_TOKENS = 46  # chat template around the image + a 32-token question (the TTFT prompts)
GEMM_OPS = ("MatMulNBits", "DynamicQuantizeMatMul", "MatMul", "FusedMatMul", "MatMulInteger", "Gemm")


def node_ops(op: str, shapes: list[dict[str, list[int]]], out_shapes: list[dict[str, list[int]]]) -> float:
    """2*M*K*N of one GEMM node from the shapes onnxruntime's profiler recorded (0 for other kinds)."""
    if op not in GEMM_OPS or not shapes or not out_shapes:
        return 0.0
    a = next(iter(shapes[0].values()))
    y = next(iter(out_shapes[0].values()))
    if not a or not y:
        return 0.0
    return 2.0 * float(np.prod(y, dtype=np.float64)) * a[-1]


def op_table(trace: Path, calls: int) -> dict[str, dict[str, float]]:
    """ms per call and operations per call by op type, the warm-up call's events left out."""
    events = [e for e in json.loads(trace.read_text()) if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    runs = sorted(e["ts"] for e in json.loads(trace.read_text()) if e.get("name") == "model_run")
    start = runs[1] if len(runs) > 1 else 0  # skip the warm-up run
    table: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "gop": 0.0, "nodes": 0})
    for e in events:
        if e["ts"] < start:
            continue
        args = e.get("args", {})
        row = table[args.get("op_name", "?")]
        row["ms"] += e["dur"] / 1e3 / calls
        row["gop"] += node_ops(args.get("op_name", ""), args.get("input_type_shape", []), args.get("output_type_shape", [])) / 1e9 / calls
        row["nodes"] += 1 / calls
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["ms"]))


def threads_of(bundle: Path, section: str, default: int) -> int:
    options = json.loads((bundle / "genai_config.json").read_text())["model"][section].get("session_options", {})
    value = int(options.get("intra_op_num_threads", default))
    return value or default


def profile_vision(bundle: Path, grid: tuple[int, int, int], threads: int, calls: int, work: Path) -> dict[str, Any]:
    sess = _session(bundle / "vision_encoder.onnx", threads, profile=str(work / f"vision_{grid[1]}x{grid[2]}"))
    patch_dim = int(sess.get_inputs()[0].shape[-1])
    feed = {"pixel_values": random_pixel_values(grid, patch_dim), "image_grid_thw": np.array([grid], dtype=np.int64)}
    times = []
    for _ in range(calls + 1):
        start = time.perf_counter()
        sess.run(OG_VISION_OUTPUTS, feed)
        times.append(time.perf_counter() - start)
    trace = Path(sess.end_profiling())
    return {"wall_s": statistics.mean(times[1:]), "ops": op_table(trace, calls), "patches": int(np.prod(grid))}


def profile_prefill(bundle: Path, tokens: int, threads: int, calls: int, work: Path) -> dict[str, Any]:
    dec = PlainDecoder(bundle / "model.onnx", threads, tokens + 8, profile=str(work / f"prefill_{tokens}"))
    rng = np.random.default_rng(tokens)
    embeds = rng.standard_normal((1, tokens, dec.width)).astype(dec.io_dtype)
    times = []
    for _ in range(calls + 1):
        start = time.perf_counter()
        dec.prefill(embeds)
        times.append(time.perf_counter() - start)
    trace = Path(dec.sess.end_profiling())
    return {"wall_s": statistics.mean(times[1:]), "ops": op_table(trace, calls), "tokens": tokens}


def kernel_peaks(threads: int, shapes: dict[str, tuple[int, int, int]], repeats: int = 10) -> dict[str, dict[str, float]]:
    """GOP/s of fp32 MatMul, dynamic int8 and the bundle's MatMulNBits kind at representative shapes, this run."""
    import onnx
    import gemm_limits as gl

    peaks: dict[str, dict[str, float]] = {}
    folder = Path(tempfile.mkdtemp(prefix="peaks-"))
    for label, (m, k, n) in shapes.items():
        for kernel in ("fp32 MatMul", "dynamic int8", "MatMulNBits 4-bit acc4"):
            path = folder / f"{label}-{kernel}.onnx".replace(" ", "_").replace("/", "_")
            onnx.save(gl.build(kernel, k, n), str(path))
            seconds = gl.median_seconds(path, m, threads, repeats, 2)
            peaks.setdefault(label, {})[kernel] = 2 * m * k * n / seconds / 1e9
    return peaks


def markdown(results: dict[str, Any]) -> str:
    cpu = results["cpu"]
    lines = [
        DOCS_SECTION,
        "",
        f"CPU: {cpu['model']} ({cpu['logical_cpus']} logical CPUs), ISA: {', '.join(cpu['isa'])}; onnxruntime "
        f"{results['onnxruntime']}; threads: vision {results['threads']['vision']}, decoder {results['threads']['decoder']}. "
        f"Command: `{results['command']}`. Each table: mean of {results['calls']} profiled calls after a warm-up; "
        "GOP/s = 2*M*K*N from each node's recorded shapes over its kernel time.",
        "",
        "Kernel peaks measured in the same run (single-node models, median of 10; GOP/s):",
        "",
        "| shape (M x K @ K x N) | fp32 MatMul | dynamic int8 | MatMulNBits 4-bit acc4 (block 32) |",
        "|---|---|---|---|",
    ]
    for label, row in results["peaks"].items():
        lines.append(f"| {label} | {row['fp32 MatMul']:.0f} | {row['dynamic int8']:.0f} | {row['MatMulNBits 4-bit acc4']:.0f} |")
    for part in ("vision", "prefill"):
        for name, run in results[part].items():
            total = sum(r["ms"] for r in run["ops"].values())
            lines += ["", f"**{part} {name}** ({run.get('patches', run.get('tokens'))} "
                      f"{'patches' if part == 'vision' else 'tokens'}): wall {run['wall_s']:.2f} s, kernels {total / 1e3:.2f} s", "",
                      "| op | ms | share | nodes | GOP | GOP/s |", "|---|---|---|---|---|---|"]
            for op, r in run["ops"].items():
                if r["ms"] < 0.005 * total:
                    continue
                rate = f"{r['gop'] / (r['ms'] / 1e3):.0f}" if r["gop"] else ""
                gop = f"{r['gop']:.1f}" if r["gop"] else ""
                lines.append(f"| {op} | {r['ms']:,.1f} | {100 * r['ms'] / total:.1f} % | {r['nodes']:.0f} | {gop} | {rate} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2, help="used where the bundle's session options say 0 / nothing")
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--docs", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = Path(tempfile.mkdtemp(prefix="profile-ttft-"))
    threads = {"vision": threads_of(args.bundle, "vision", args.threads), "decoder": threads_of(args.bundle, "decoder", args.threads)}
    results: dict[str, Any] = {"cpu": cpu_info(), "onnxruntime": ort.__version__, "threads": threads, "calls": args.calls,
                               "command": f"python benchmarks/profile_ttft.py --bundle BUNDLE --calls {args.calls}",
                               "vision": {}, "prefill": {}}
    decoder = json.loads((args.bundle / "genai_config.json").read_text())["model"]["decoder"]
    hidden = int(decoder["num_attention_heads"]) * int(decoder["head_size"])  # hidden_size counts the DeepStack columns
    for width, height in IMAGE_SIZES:
        grid = hf_grid(height, width)
        name = f"{width}x{height}"
        log.info("vision %s grid %s", name, grid)
        results["vision"][name] = profile_vision(args.bundle, grid, threads["vision"], args.calls, work)
        tokens = grid[1] * grid[2] // 4 + TEMPLATE_AND_QUESTION_TOKENS
        log.info("prefill %d tokens", tokens)
        results["prefill"][name] = profile_prefill(args.bundle, tokens, threads["decoder"], args.calls, work)
    vision_width = 1024 if hidden >= 2048 else hidden
    results["peaks"] = kernel_peaks(threads["decoder"], {
        f"784 x {vision_width} @ {vision_width} x {4 * vision_width} (vision MLP up)": (784, vision_width, 4 * vision_width),
        f"238 x {hidden} @ {hidden} x {3 * hidden} (prefill gate / up)": (238, hidden, 3 * hidden),
    })
    text = markdown(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.docs:
        write_docs_section(DOCS_SECTION, text, args.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
