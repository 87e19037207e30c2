"""GEMM throughput through onnxruntime at the Qwen3-VL 2B shapes: fp32 against the int8 kernels on this CPU.

    python benchmarks/gemm_limits.py [--threads 2,1] [--repeats 30] [--warmups 3] [--json out.json] [--docs docs/benchmarks.md]

One single-node ONNX model per kernel and weight shape (random weights as initializers), timed with
onnxruntime's CPUExecutionProvider on a numpy [M x K] input: fp32 ``MatMul``; dynamic int8
``com.microsoft.DynamicQuantizeMatMul`` (int8 weight with a per-column scale, activations quantized per call,
the vision encoder's kernel at ``-p int4`` on CPU); ``com.microsoft.MatMulNBits`` with 4 and 8 bits,
block_size 32, accuracy_level 4 (int8 activations, the decoder's kernel), weights from onnxruntime's
MatMulNBitsQuantizer as benchmarks/matmulnbits_sweep.py does. Shapes: the vision tower's qkv, MLP up and MLP
down at 784 and 2700 patches, the decoder's gate/up, down and q/o at a 256-token prompt. Median of
``--repeats`` runs after ``--warmups``; GOP/s = 2*M*K*N / time. With ``--docs`` the section of
docs/benchmarks.md is rewritten from this run. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_info, write_docs_section  # noqa: E402

DOCS_SECTION = "## GEMM throughput through onnxruntime (`benchmarks/gemm_limits.py`)"
# (model part, M, K, N, label)
SHAPES: list[tuple[str, int, int, int, str]] = [
    *((("vision", m, k, n, f"{m} x {k} @ {k} x {n} ({what})")
       for m in (784, 2700) for k, n, what in ((1024, 3072, "qkv"), (1024, 4096, "MLP up"), (4096, 1024, "MLP down")))),
    *((("decoder prefill", 256, k, n, f"256 x {k} @ {k} x {n} ({what})")
       for k, n, what in ((2048, 6144, "gate / up"), (6144, 2048, "down"), (2048, 2048, "q / o")))),
]
KERNELS = ("fp32 MatMul", "dynamic int8", "MatMulNBits 4-bit acc4", "MatMulNBits 8-bit acc4")


def random_weight(k: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(k * 7 + n)
    return (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)


def float_matmul(k: int, n: int) -> Any:
    """One fp32 MatMul node with a fixed random [k, n] weight, input x [m, k]."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(random_weight(k, n), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def dynamic_int8_matmul(k: int, n: int) -> Any:
    """com.microsoft.DynamicQuantizeMatMul: symmetric int8 weight, one scale per output column."""
    from onnx import TensorProto, helper, numpy_helper

    w = random_weight(k, n)
    scale = (np.abs(w).max(axis=0) / 127.0).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "ws", "wz"], ["y"], name="dqmm", domain="com.microsoft")],
        "dqmm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale, "ws"),
         numpy_helper.from_array(np.zeros(n, dtype=np.int8), "wz")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def nbits_matmul(k: int, n: int, bits: int) -> Any:
    """MatMulNBits, block_size 32, accuracy_level 4, symmetric, from onnxruntime's own quantizer."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(float_matmul(k, n), bits=bits, block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    return quantizer.model.model


def build(kernel: str, k: int, n: int) -> Any:
    if kernel == "fp32 MatMul":
        return float_matmul(k, n)
    if kernel == "dynamic int8":
        return dynamic_int8_matmul(k, n)
    return nbits_matmul(k, n, 8 if "8-bit" in kernel else 4)


def median_seconds(path: Path, m: int, threads: int, repeats: int, warmups: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    k = sess.get_inputs()[0].shape[1]
    feed = {"x": np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)}
    for _ in range(warmups):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(threads: list[int], repeats: int, warmups: int) -> list[dict]:
    import onnx

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kernel in KERNELS:
            for (k, n) in sorted({(s[2], s[3]) for s in SHAPES}):
                path = Path(tmp) / "model.onnx"
                onnx.save(build(kernel, k, n), str(path))
                for part, m, sk, sn, label in SHAPES:
                    if (sk, sn) != (k, n):
                        continue
                    for t in threads:
                        sec = median_seconds(path, m, t, repeats, warmups)
                        rows.append({"part": part, "shape": label, "m": m, "k": k, "n": n, "kernel": kernel,
                                     "threads": t, "ms": sec * 1e3, "gops": 2 * m * k * n / sec / 1e9})
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], part: str, threads: int) -> list[str]:
    out = [f"| {part}, {threads} thread{'s' if threads > 1 else ''} | " + " | ".join(KERNELS) + " |",
           "|---" * (len(KERNELS) + 1) + "|"]
    for label in (s[4] for s in SHAPES if s[0] == part):
        cells = {r["kernel"]: r for r in rows if r["shape"] == label and r["threads"] == threads}
        out.append(f"| {label} | " + " | ".join(
            f"{cells[k]['ms']:.1f} ms / {cells[k]['gops']:.0f}" if k in cells else "n/a" for k in KERNELS) + " |")
    return out


def summary(rows: list[dict], threads: int) -> list[str]:
    """Per shape: the best int8 kernel's GOP/s over fp32's, at the given thread count."""
    ratios = []
    for label in (s[4] for s in SHAPES):
        cells = {r["kernel"]: r["gops"] for r in rows if r["shape"] == label and r["threads"] == threads}
        best = max((k for k in KERNELS[1:] if k in cells), key=cells.get)
        ratios.append((label, best, cells[best] / cells["fp32 MatMul"], cells))
    return ratios


def markdown(results: dict) -> str:
    rows, threads, cpu = results["rows"], results["threads"], results["cpu"]
    lines = [DOCS_SECTION, "", f"`{results['command']}`", "",
             (f"CPU: {cpu['model']} ({cpu['logical_cpus']} logical CPUs), ISA: {', '.join(cpu['isa'])}; "
             f"onnxruntime {results['onnxruntime']}; intra_op_num_threads {' and '.join(map(str, threads))}. "
             f"Each cell: median of {results['repeats']} runs after {results['warmups']} warm-ups, "
             "ms / GOP/s (2*M*K*N / time). One single-node model per kernel; dynamic int8 is "
             "`DynamicQuantizeMatMul` (per-column int8 weight scale), MatMulNBits has block_size 32, symmetric."), ""]
    for t in threads:
        for part in dict.fromkeys(r["part"] for r in rows):
            lines += table(rows, part, t) + [""]
    lines += results["sentences"] + [""]
    return "\n".join(lines)


def sentences(rows: list[dict], threads: list[int]) -> list[str]:
    t = threads[0]
    ratios = summary(rows, t)
    lo, hi = min(ratios, key=lambda r: r[2]), max(ratios, key=lambda r: r[2])
    fp32 = [r["gops"] for r in rows if r["kernel"] == "fp32 MatMul" and r["threads"] == t]
    out = [f"At {t} threads fp32 MatMul reaches {min(fp32):.0f} to {max(fp32):.0f} GOP/s across these shapes.",
           (f"The best int8 kernel per shape is {lo[2]:.2f}x to {hi[2]:.2f}x fp32's GOP/s: lowest at "
           f"{lo[0]} ({lo[1]}), highest at {hi[0]} ({hi[1]}).")]
    slower = [(label, k, c[k] / c["fp32 MatMul"]) for label, _, _, c in ratios for k in KERNELS[1:]
              if k in c and c[k] < c["fp32 MatMul"]]
    if slower:
        out.append("Slower than fp32 at this thread count: " + "; ".join(
            f"{k} at {label} ({r:.2f}x)" for label, k, r in slower) + ".")
    else:
        out.append("Every int8 kernel is faster than fp32 at every shape at this thread count.")
    nb = [c["MatMulNBits 4-bit acc4"] / c["dynamic int8"] for _, _, _, c in ratios]
    out.append(f"MatMulNBits 4-bit at accuracy_level 4 delivers {min(nb):.2f}x to {max(nb):.2f}x the GOP/s of "
               "dynamic int8 (DynamicQuantizeMatMul) at the same shapes.")
    if len(threads) > 1:
        per = {k: statistics.median(
            next(r["gops"] for r in rows if r["kernel"] == k and r["shape"] == s and r["threads"] == threads[0])
            / next(r["gops"] for r in rows if r["kernel"] == k and r["shape"] == s and r["threads"] == threads[1])
            for s in (shape[4] for shape in SHAPES)) for k in KERNELS if any(r["kernel"] == k for r in rows)}
        out.append(f"Going from {threads[1]} to {threads[0]} threads multiplies GOP/s by a median of "
                   + ", ".join(f"{v:.2f}x ({k})" for k, v in per.items()) + ".")
    return [" ".join(out)]


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="2,1", help="intra-op thread counts, first one leads the summary")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmups", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--docs", type=Path, default=None)
    args = p.parse_args(argv)
    threads = [int(v) for v in args.threads.split(",") if v]
    started = time.perf_counter()
    rows = measure(threads, args.repeats, args.warmups)
    results = {"command": "python benchmarks/gemm_limits.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "cpu": cpu_info(), "onnxruntime": ort.__version__, "threads": threads, "repeats": args.repeats,
               "warmups": args.warmups, "rows": rows, "sentences": sentences(rows, threads)}
    results["run_seconds"] = time.perf_counter() - started
    print(json.dumps(results, indent=2))
    text = markdown(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.docs:
        write_docs_section(DOCS_SECTION, text, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
