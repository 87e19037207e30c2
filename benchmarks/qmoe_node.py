"""onnxruntime's QMoE op alone at the Qwen3-VL-30B-A3B expert shape, against the bytes it has to read.

    python benchmarks/qmoe_node.py                      # the default sweep (~10 min on 2 cores), prints a table
    python benchmarks/qmoe_node.py --json out.json --tokens 1 300

Graph: ``--layers`` independent QMoE nodes (default 4: 4 x 128 experts, ~1.5 GB at int4, far more than the L3
cache), each with its own random expert weights, all fed the same token rows and each its own router logits, with
the attributes og 0.18's builder writes for ``-p int4 -e cpu`` (builders/base.py make_qmoe_op and
make_qmoe_weights: activation_type swiglu, swiglu_fusion 1 (interleaved gate/up rows), normalize_routing_weights 1,
expert_weight_bits 4, block_size 32, fp32 scales, zero biases, no zero points, no accuracy_level). Each timed call
draws new router logits, so every call reads 8 experts it did not read in the call before (as decode does). Time
per layer = median call / layers.

Next to it, the same bytes through MatMulNBits (the dense decoder's int4 kernel): per layer 8 gate_up
[2I x H] and 8 down [H x I] matrices of their own, so a difference between the two rows is the MoE op's
overhead, not the weight format's. The bound is the bytes of the 8 routed experts (int4 + scales + biases)
over the machine's read bandwidth (benchmarks/measure_machine.py).

Variants, each in its own process (onnxruntime reads the environment variables once, in the kernel's
constructor): threads 1 / 2; ORT_QMOE_CPU_QNBIT_GEMM=0 (1.32's older dequantize-to-fp32 + SGEMM path);
accuracy_level 4 (int8 activations); block 64 / 128; 8-bit experts. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Qwen3-VL-30B-A3B (text_config): hidden_size, moe_intermediate_size, num_experts, num_experts_per_tok.
HIDDEN, MOE_INTERMEDIATE, EXPERTS, TOP_K = 2048, 768, 128, 8


def expert_bytes(bits: int, block: int, hidden: int = HIDDEN, inter: int = MOE_INTERMEDIATE, biases: bool = True) -> int:
    """Bytes of one expert as og stores it on CPU: packed weights, fp32 block scales, fp32 zero biases."""
    fc1 = 2 * inter * hidden * bits // 8 + 2 * inter * (hidden // block) * 4
    fc2 = hidden * inter * bits // 8 + hidden * (inter // block) * 4
    return fc1 + fc2 + ((2 * inter + hidden) * 4 if biases else 0)


def qmoe_model(layers: int, bits: int, block: int, accuracy_level: int | None, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    h, i, e = HIDDEN, MOE_INTERMEDIATE, EXPERTS
    nodes, inits, inputs, outputs = [], [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", h])], []
    for layer in range(layers):
        p = f"l{layer}."
        w1 = rng.integers(0, 256, size=(e, 2 * i, h * bits // 8), dtype=np.uint8)
        s1 = (rng.uniform(0.5, 1.5, size=(e, 2 * i, h // block)) / (8 * np.sqrt(h))).astype(np.float32)
        w2 = rng.integers(0, 256, size=(e, h, i * bits // 8), dtype=np.uint8)
        s2 = (rng.uniform(0.5, 1.5, size=(e, h, i // block)) / (8 * np.sqrt(i))).astype(np.float32)
        for name, arr in (("w1", w1), ("s1", s1), ("b1", np.zeros((e, 2 * i), np.float32)),
                          ("w2", w2), ("s2", s2), ("b2", np.zeros((e, h), np.float32))):
            inits.append(numpy_helper.from_array(arr, p + name))
        inputs.append(helper.make_tensor_value_info(p + "router", TensorProto.FLOAT, ["T", e]))
        outputs.append(helper.make_tensor_value_info(p + "y", TensorProto.FLOAT, ["T", h]))
        attrs = dict(activation_alpha=1.0, activation_beta=0.0, activation_type="swiglu", expert_weight_bits=bits,
                     k=TOP_K, normalize_routing_weights=1, swiglu_fusion=1, use_sparse_mixer=0, block_size=block)
        if accuracy_level is not None:
            attrs["accuracy_level"] = accuracy_level
        nodes.append(helper.make_node(
            "QMoE", ["x", p + "router", p + "w1", p + "s1", p + "b1", p + "w2", p + "s2", p + "b2", "", "", "", "", "", ""],
            [p + "y"], name=p + "QMoE", domain="com.microsoft", **attrs))
    graph = helper.make_graph(nodes, "qmoe", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def matmulnbits_model(layers: int, bits: int, block: int, accuracy_level: int | None, seed: int = 0):
    """Per layer TOP_K gate_up [2I x H] and TOP_K down [H x I] MatMulNBits, weights of their own: the routed
    experts' bytes through the dense decoder's kernel (x feeds the gate_up ones, z [T, I] the down ones)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    h, i = HIDDEN, MOE_INTERMEDIATE
    nodes, inits, outputs = [], [], []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", h]),
              helper.make_tensor_value_info("z", TensorProto.FLOAT, ["T", i])]
    for layer in range(layers):
        for slot in range(TOP_K):
            for which, (k, n, src) in {"gate_up": (h, 2 * i, "x"), "down": (i, h, "z")}.items():
                p = f"l{layer}.e{slot}.{which}."
                blocks = k // block
                inits.append(numpy_helper.from_array(
                    rng.integers(0, 256, size=(n, blocks, block * bits // 8), dtype=np.uint8), p + "B"))
                inits.append(numpy_helper.from_array(
                    (rng.uniform(0.5, 1.5, size=(n * blocks,)) / (8 * np.sqrt(k))).astype(np.float32), p + "scales"))
                attrs = dict(K=k, N=n, bits=bits, block_size=block)
                if accuracy_level is not None:
                    attrs["accuracy_level"] = accuracy_level
                nodes.append(helper.make_node("MatMulNBits", [src, p + "B", p + "scales"], [p + "y"], name=p + "mm",
                                              domain="com.microsoft", **attrs))
                outputs.append(helper.make_tensor_value_info(p + "y", TensorProto.FLOAT, ["T", n]))
    graph = helper.make_graph(nodes, "mnb", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build, load and time one variant (in this process; the environment is the caller's)."""
    import onnx
    import onnxruntime as ort

    layers, bits, block, level = cfg["layers"], cfg["bits"], cfg["block"], cfg.get("accuracy_level")
    make = qmoe_model if cfg["op"] == "QMoE" else matmulnbits_model
    with tempfile.TemporaryDirectory(dir=cfg.get("tmp")) as tmp:
        path = Path(tmp) / "m.onnx"
        onnx.save(make(layers, bits, block, level), str(path), save_as_external_data=True, location="m.onnx.data")
        so = ort.SessionOptions()
        so.intra_op_num_threads = cfg["threads"]
        start = time.perf_counter()
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - start
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {**cfg, "load_s": load_s, "tokens": {}}
    for tokens in cfg["token_counts"]:
        x = rng.standard_normal((tokens, HIDDEN)).astype(np.float32)
        feeds = []
        for _ in range(cfg["calls"] + cfg["warmup"]):
            feed = {"x": x}
            if cfg["op"] == "QMoE":
                for layer in range(layers):
                    feed[f"l{layer}.router"] = rng.standard_normal((tokens, EXPERTS)).astype(np.float32)
            else:
                feed["z"] = rng.standard_normal((tokens, MOE_INTERMEDIATE)).astype(np.float32)
            feeds.append(feed)
        times = []
        for n, feed in enumerate(feeds):
            start = time.perf_counter()
            sess.run(None, feed)
            if n >= cfg["warmup"]:
                times.append(time.perf_counter() - start)
        per_layer = statistics.median(times) / layers
        out["tokens"][str(tokens)] = {"per_layer_ms": per_layer * 1e3, "min_per_layer_ms": min(times) / layers * 1e3}
    return out


VARIANTS: list[dict[str, Any]] = [
    # label, op, bits, block, accuracy_level, env
    {"label": "og's QMoE (int4, block 32)", "op": "QMoE", "bits": 4, "block": 32},
    {"label": "QMoE, ORT_QMOE_CPU_QNBIT_GEMM=0 (dequantize + SGEMM path)", "op": "QMoE", "bits": 4, "block": 32,
     "env": {"ORT_QMOE_CPU_QNBIT_GEMM": "0"}},
    {"label": "QMoE, accuracy_level 4 (int8 activations)", "op": "QMoE", "bits": 4, "block": 32, "accuracy_level": 4},
    {"label": "QMoE, block 64", "op": "QMoE", "bits": 4, "block": 64},
    {"label": "QMoE, block 128", "op": "QMoE", "bits": 4, "block": 128},
    {"label": "QMoE, block 128, accuracy_level 4", "op": "QMoE", "bits": 4, "block": 128, "accuracy_level": 4},
    {"label": "QMoE, 8-bit experts (block 32)", "op": "QMoE", "bits": 8, "block": 32},
    {"label": "MatMulNBits, same 8 experts' bytes (int4, block 32)", "op": "MatMulNBits", "bits": 4, "block": 32},
    {"label": "MatMulNBits, same bytes, accuracy_level 4", "op": "MatMulNBits", "bits": 4, "block": 32, "accuracy_level": 4},
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokens", type=int, nargs="+", default=[1], help="token rows per call (1: a decode step)")
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--only", type=int, nargs="+", help="indexes into VARIANTS")
    p.add_argument("--bandwidth-gbs", type=float, default=None, help="skip measuring the read bandwidth")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:  # child: one variant
        print(json.dumps(run_one(json.loads(args.one))))
        return 0

    if args.bandwidth_gbs:
        bandwidth = {"GBps": args.bandwidth_gbs, "given": True}
    else:
        from measure_machine import bandwidth as measure_bandwidth

        bandwidth = measure_bandwidth(2, repeats=15)
    rows = []
    for index, variant in enumerate(VARIANTS):
        if args.only and index not in args.only:
            continue
        for threads in args.threads:
            cfg = {**{k: v for k, v in variant.items() if k != "env"}, "threads": threads, "layers": args.layers,
                   "token_counts": args.tokens, "calls": args.calls, "warmup": 3}
            env = dict(os.environ, **variant.get("env", {}))
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{variant['label']}, {threads} threads: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["env"] = variant.get("env", {})
            row["active_bytes"] = TOP_K * expert_bytes(row["bits"], row["block"], biases=row["op"] == "QMoE")
            for t in row["tokens"].values():
                t["GBps"] = row["active_bytes"] / (t["per_layer_ms"] / 1e3) / 1e9
            rows.append(row)
            print(json.dumps(row), flush=True)
    gbps = max(v for k, v in bandwidth.items() if k.endswith("GBps"))
    print(f"\nread bandwidth (torch.sum, best of the threads counts): {gbps:.1f} GB/s; "
          + ", ".join(f"{k} {v:.1f}" for k, v in bandwidth.items() if k.endswith("GBps")))
    print("| variant | threads | tokens | ms per layer | bytes read (8 experts) | GB/s | bound ms | time / bound |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for tokens, t in r["tokens"].items():
            bound_ms = r["active_bytes"] / (gbps * 1e9) * 1e3
            print(f"| {r['label']} | {r['threads']} | {tokens} | {t['per_layer_ms']:.2f} | {r['active_bytes'] / 1e6:.1f} MB | "
                  f"{t['GBps']:.1f} | {bound_ms:.2f} | {t['per_layer_ms'] / bound_ms:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"bandwidth": bandwidth, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
