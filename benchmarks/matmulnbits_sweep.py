"""MatMulNBits kernel sweep at the 2B decoder's shapes: accuracy_level x block_size, decode and prefill.

    python benchmarks/matmulnbits_sweep.py [--threads 0] [--repeats 5] [--json out.json]

One single-node model per weight shape (q, k, v, o, gate, up, down of a 2B layer, and the lm_head),
weights quantized by onnxruntime's own MatMulNBitsQuantizer (4 bits, symmetric, as og's builder
does), each timed with M = 1 (a decode step), 229 and 700 rows (prefill of a 448x448 and a 1000x667
prompt). The per-token or per-prompt estimate is 28 x (sum over one layer) + the lm_head at M = 1
(og prunes it to the last row). Attention, norms and rotary are not included: this isolates the
kernel choice. Also prints the bandwidth bound: bytes of int4 weights + scales read per decode step
at the machine's measured read bandwidth (benchmarks/measure_machine.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HIDDEN, INTERMEDIATE, Q_WIDTH, KV_WIDTH, LAYERS, VOCAB = 2048, 6144, 16 * 128, 8 * 128, 28, 151936
LAYER_SHAPES = {"q_proj": (HIDDEN, Q_WIDTH), "k_proj": (HIDDEN, KV_WIDTH), "v_proj": (HIDDEN, KV_WIDTH),
                "o_proj": (Q_WIDTH, HIDDEN), "gate_proj": (HIDDEN, INTERMEDIATE), "up_proj": (HIDDEN, INTERMEDIATE),
                "down_proj": (INTERMEDIATE, HIDDEN)}
ROWS = (1, 229, 700)


def _float_matmul(k: int, n: int):
    """One MatMul node with a fixed random [k, n] weight (seeded by the shape), input [m, k]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(k * 7 + n)
    weight = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def quantized_matmul(k: int, n: int, block_size: int, accuracy_level: int, folder: Path) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(_float_matmul(k, n), bits=4, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level or None)
    quantizer.process()
    path = folder / f"mm_{k}x{n}_b{block_size}_a{accuracy_level}.onnx"
    onnx.save(quantizer.model.model, str(path))
    return path


def dynamic_int8_matmul(k: int, n: int, folder: Path) -> Path:
    """The same weight through onnxruntime's dynamic quantization (s8 per output channel): the kernel a
    separate int8 prompt model would run (og's decoder pipeline, run_on_prompt), for comparison only."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = folder / f"f_{k}x{n}.onnx", folder / f"q8_{k}x{n}.onnx"
    onnx.save(_float_matmul(k, n), str(src))
    quantize_dynamic(src, out, per_channel=True, weight_type=QuantType.QInt8)
    src.unlink()
    return out


def kernel_row(make: Callable[[int, int, Path], Path], threads: int, repeats: int, **labels) -> dict:
    """28 x (one layer's MatMuls) at each row count of ROWS, plus the lm_head at M = 1 (og prunes it)."""
    per_m = {m: 0.0 for m in ROWS}
    with tempfile.TemporaryDirectory() as tmp:
        for k, n in LAYER_SHAPES.values():
            path = make(k, n, Path(tmp))
            for m in ROWS:
                per_m[m] += LAYERS * time_call(path, m, threads, repeats)
            path.unlink()
        lm_head_s = time_call(make(HIDDEN, VOCAB, Path(tmp)), 1, threads, repeats)
    return {**labels, "lm_head_m1_s": lm_head_s, "decode_step_s": per_m[1] + lm_head_s,
            **{f"prefill_{m}_s": per_m[m] + lm_head_s for m in ROWS if m > 1}}


def gemm_peak(threads: int, repeats: int, size: int = 2048) -> dict:
    """fp32 MatMul and int8 MatMulInteger at size^3 on this machine: the compute ceiling the kernels face."""
    import onnx
    from onnx import TensorProto, helper

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dtype, op in (("fp32_MatMul", TensorProto.FLOAT, "MatMul"), ("int8_MatMulInteger", TensorProto.UINT8, "MatMulInteger")):
            wtype = TensorProto.FLOAT if dtype == TensorProto.FLOAT else TensorProto.INT8
            graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "g",
                                      [helper.make_tensor_value_info("a", dtype, [size, size]),
                                       helper.make_tensor_value_info("b", wtype, [size, size])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT if op == "MatMul" else TensorProto.INT32, [size, size])])
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            rng = np.random.default_rng(0)
            if op == "MatMul":
                feed = {"a": rng.standard_normal((size, size), dtype=np.float32), "b": rng.standard_normal((size, size), dtype=np.float32)}
            else:
                feed = {"a": rng.integers(0, 255, (size, size), dtype=np.uint8), "b": rng.integers(-127, 127, (size, size), dtype=np.int8)}
            sess.run(None, feed)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                sess.run(None, feed)
                best = min(best, time.perf_counter() - start)
            out[name + "_GOPs"] = 2 * size**3 / best / 1e9
    return out


def time_call(path: Path, m: int, threads: int, repeats: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    k = sess.get_inputs()[0].shape[1]
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    sess.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sweep(threads: int, repeats: int, levels: tuple[int, ...], blocks: tuple[int, ...]) -> list[dict]:
    rows = []
    for level in levels:
        for block in blocks:
            def make(k: int, n: int, folder: Path, b: int = block, lv: int = level) -> Path:
                return quantized_matmul(k, n, b, lv, folder)

            rows.append(kernel_row(make, threads, repeats, accuracy_level=level, block_size=block))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def weight_bytes(block_size: int) -> int:
    """int4 weights + fp32 scales of the 28 layers and the lm_head (symmetric: no zero points)."""
    per_layer = sum(k * n // 2 + (k // block_size) * n * 4 for k, n in LAYER_SHAPES.values())
    return LAYERS * per_layer + HIDDEN * VOCAB // 2 + (HIDDEN // block_size) * VOCAB * 4


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default, every core)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--levels", default="0,1,4")
    p.add_argument("--blocks", default="32,64,128")
    p.add_argument("--bandwidth-gbs", type=float, default=None, help="measured read bandwidth for the bound")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--dynamic-int8", action="store_true", help="add a row for dynamic int8 (per-channel) weights")
    p.add_argument("--gemm-peak", action="store_true", help="also print fp32 / int8 GEMM throughput at 2048^3")
    args = p.parse_args(argv)
    rows = sweep(args.threads, args.repeats, tuple(int(v) for v in args.levels.split(",") if v),
                 tuple(int(v) for v in args.blocks.split(",")))
    if args.dynamic_int8:
        rows.append(kernel_row(dynamic_int8_matmul, args.threads, args.repeats,
                               accuracy_level="dynamic int8", block_size="per channel"))
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        per_layer_int8 = sum(k * n + n * 4 for k, n in LAYER_SHAPES.values())
        row["weight_bytes"] = (weight_bytes(row["block_size"]) if isinstance(row["block_size"], int)
                               else LAYERS * per_layer_int8 + HIDDEN * VOCAB + VOCAB * 4)
        if args.bandwidth_gbs:
            row["bandwidth_bound_s"] = row["weight_bytes"] / (args.bandwidth_gbs * 1e9)
    print("| accuracy_level | block_size | decode step (matmuls) | tok/s | prefill 229 | prefill 700 | weights |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['accuracy_level']} | {r['block_size']} | {r['decode_step_s'] * 1e3:.1f} ms | {1 / r['decode_step_s']:.1f} | "
              f"{r['prefill_229_s']:.2f} s | {r['prefill_700_s']:.2f} s | {r['weight_bytes'] / 1e9:.3f} GB |")
    peak = gemm_peak(args.threads, args.repeats) if args.gemm_peak else None
    if peak:
        print("GEMM 2048^3 on this machine: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "gemm_peak": peak}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
