"""Two vision_encoder.onnx files, timed as og runs them (only `image_features` requested), interleaved.

    python benchmarks/vision_outputs_cost.py OLD/vision_encoder.onnx NEW/vision_encoder.onnx [--repeats 3]

Used to show that the named outputs (image_embeds, deepstack_features) cost og nothing: onnxruntime computes
only the nodes a requested output needs. Grids: 448x448 ([1, 28, 28]) and 1000x667 ([1, 42, 62]).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from builder_qwen3vl.ground.contract import VISION

OG_OUTPUTS = [t.name for t in VISION.outputs]


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    for grid in ([1, 28, 28], [1, 42, 62]):
        patches = grid[0] * grid[1] * grid[2]
        feed = {"pixel_values": rng.uniform(-1, 1, (patches, 1536)).astype(np.float32),
                "image_grid_thw": np.array([grid], np.int64)}
        sessions, times, outs = {}, {"old": [], "new": []}, {}
        for name in times:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 0  # as the bundle's genai_config
            sessions[name] = ort.InferenceSession(getattr(args, name), opts, providers=["CPUExecutionProvider"])
            outs[name] = sessions[name].run(OG_OUTPUTS, feed)[0]  # warm-up
        for _ in range(args.repeats):
            for name, sess in sessions.items():
                start = time.perf_counter()
                sess.run(OG_OUTPUTS, feed)
                times[name].append(time.perf_counter() - start)
        medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
        print(f"grid {grid}: median s {medians}, image_features equal: {bool(np.array_equal(outs['old'], outs['new']))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
