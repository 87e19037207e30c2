"""Machine read bandwidth (both cores) and what the decoder reads per token, from model.onnx."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

ROTARY_CACHE_MARKERS = ("cos_cache", "sin_cache")  # read by prefill/decode only at one row per position


def bandwidth(threads: int, gib: float = 1.0, repeats: int = 7) -> dict[str, Any]:
    """Best read bandwidth of torch.sum over a ``gib`` GiB fp32 tensor with 1 and with ``threads`` threads."""
    import torch

    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    out: dict[str, Any] = {"tensor_bytes": x.numel() * 4}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        x.sum()  # warm-up (touches the pages)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - start)
        out[f"threads_{n}_GBps"] = x.numel() * 4 / best / 1e9
    out["GBps"] = out[f"threads_{threads}_GBps"]
    out["threads"] = threads
    return out


def initializer_size(init: Any) -> int:
    """Bytes of one TensorProto initializer, stored externally, raw or in typed fields."""
    import math

    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    if init.data_location == onnx.TensorProto.EXTERNAL:
        return int(next(e.value for e in init.external_data if e.key == "length"))
    if init.raw_data:
        return len(init.raw_data)
    return math.prod(init.dims) * tensor_dtype_to_np_dtype(init.data_type).itemsize


def initializer_bytes(model_path: Path) -> dict[str, Any]:
    """Bytes of model.onnx initializers by kind; decode reads all but the rotary cos/sin caches."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    kinds = {"matmul_nbits_layers": 0, "lm_head": 0, "norms_and_other": 0, "rotary_cache_not_read": 0}
    for init in model.graph.initializer:
        size = initializer_size(init)
        name = init.name
        if any(m in name for m in ROTARY_CACHE_MARKERS):
            kinds["rotary_cache_not_read"] += size
        elif "lm_head" in name:
            kinds["lm_head"] += size
        elif "MatMul" in name or name.endswith(("_Q4", "_scales", "_zero_points", "_Q8")):
            kinds["matmul_nbits_layers"] += size
        else:
            kinds["norms_and_other"] += size
    kinds["read_per_token"] = kinds["matmul_nbits_layers"] + kinds["lm_head"] + kinds["norms_and_other"]
    return kinds


def disk_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
