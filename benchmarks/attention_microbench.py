"""One vision-attention layer at the 2B shape (16 heads x 64): MatMul/Softmax/MatMul vs com.microsoft.MultiHeadAttention.

    python benchmarks/attention_microbench.py [--threads 2] [--repeats 5]

The exported vision encoder computes attention per frame as plain ops (query_FHSK @ key^T, Softmax,
@ value_FHSK); onnxruntime's contrib MultiHeadAttention is the fused alternative. Both graphs here take
query/key/value as [1, S, 16 * 64] and are checked to agree before timing. Sequence lengths: 784 (448x448)
and 2,604 (1000x667) patches. Prints ms per layer, x24 layers, and GFLOP/s of the two attention MatMuls.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

HEADS, HEAD_DIM, LAYERS = 16, 64, 24


def _graphs(folder: Path) -> dict[str, Path]:
    import onnx
    from onnx import TensorProto, helper

    width = HEADS * HEAD_DIM
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "s", width]) for n in ("q", "k", "v")]
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, "s", width])
    heads = helper.make_tensor("heads_shape", TensorProto.INT64, [4], [1, -1, HEADS, HEAD_DIM])
    flat = helper.make_tensor("flat_shape", TensorProto.INT64, [3], [1, -1, width])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [HEAD_DIM**-0.5])
    nodes = []
    for n in ("q", "k", "v"):  # [1, S, H*K] -> [1, H, S, K]
        nodes += [helper.make_node("Reshape", [n, "heads_shape"], [f"{n}_BSHK"]),
                  helper.make_node("Transpose", [f"{n}_BSHK"], [f"{n}_BHSK"], perm=[0, 2, 1, 3])]
    nodes += [
        helper.make_node("Transpose", ["k_BHSK"], ["k_BHKS"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q_BHSK", "k_BHKS"], ["scores_raw"]),
        helper.make_node("Mul", ["scores_raw", "scale"], ["scores_BHSS"]),
        helper.make_node("Softmax", ["scores_BHSS"], ["probs_BHSS"], axis=-1),
        helper.make_node("MatMul", ["probs_BHSS", "v_BHSK"], ["o_BHSK"]),
        helper.make_node("Transpose", ["o_BHSK"], ["o_BSHK"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o_BSHK", "flat_shape"], ["o"]),
    ]
    plain = helper.make_graph(nodes, "plain", io, [out], [heads, flat, scale])
    fused = helper.make_graph([helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft",
                                                num_heads=HEADS, scale=HEAD_DIM**-0.5)], "mha", io, [out])
    paths = {}
    for name, graph in (("MatMul/Softmax/MatMul", plain), ("MultiHeadAttention", fused)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
        paths[name] = folder / f"{name.replace('/', '_')}.onnx"
        onnx.save(model, str(paths[name]))
    return paths


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _graphs(Path(tmp))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        sessions = {n: ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]) for n, path in paths.items()}
        print("| sequence | graph | ms per layer | x24 layers | GFLOP/s of the two MatMuls |")
        print("|---|---|---|---|---|")
        for s in (784, 2604):
            rng = np.random.default_rng(s)
            feed = {n: rng.standard_normal((1, s, HEADS * HEAD_DIM), dtype=np.float32) for n in ("q", "k", "v")}
            outs = {n: sess.run(None, feed)[0] for n, sess in sessions.items()}
            a, b = outs.values()
            if np.abs(a - b).max() > 1e-4:
                raise RuntimeError(f"S={s}: the two graphs disagree by {np.abs(a - b).max():.2e}")
            flop = 4 * s * s * HEAD_DIM * HEADS
            for name, sess in sessions.items():
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    sess.run(None, feed)
                    times.append(time.perf_counter() - start)
                med = statistics.median(times)
                print(f"| {s} | {name} | {med * 1e3:.1f} | {med * LAYERS:.2f} s | {flop / med / 1e9:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
