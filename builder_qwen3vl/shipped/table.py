"""The tiny trained model's frozen embedding table, regenerated bit for bit on any machine.

The table is 151,936 x 128 fp32 (78 MB of the trained checkpoint's 92 MB) and never trains, so the
shipped weights leave it out and ``embedding_table`` makes it again; ``table_sha256`` is checked
against the hash the training run recorded from its own tensor.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(state: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on each 64-bit counter (wrapping uint64 arithmetic)."""
    z = state + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def embedding_table(rows: int, cols: int, std: float, seed: int) -> np.ndarray:
    """A float32 [rows, cols] table, mean 0 and standard deviation ``std``, the same bits on any machine.

    torch's and numpy's normal samplers may change between versions and CPUs (vectorised log/cos), so
    each value is the centred sum of four 24-bit integers from SplitMix64 (Irwin-Hall, close to a
    normal) times one float64 constant: integer arithmetic plus a single IEEE multiply and a cast.
    """
    n = rows * cols
    out = np.empty(n, dtype=np.float32)
    base = np.uint64(seed) * np.uint64(0x100000001B3)
    scale = std * math.sqrt(3.0) / 2.0**24  # each 24-bit term has variance ~2^48/12; four of them 2^48/3
    chunk = 1 << 21
    with np.errstate(over="ignore"):
        for start in range(0, n, chunk):
            index = np.arange(start, min(n, start + chunk), dtype=np.uint64) * np.uint64(4) + base
            total = np.zeros(index.shape, dtype=np.int64)
            for k in range(4):
                total += (_splitmix64(index + np.uint64(k)) >> np.uint64(40)).astype(np.int64)
            out[start:start + len(index)] = ((total - 2 * (2**24 - 1)).astype(np.float64) * scale).astype(np.float32)
    return out.reshape(rows, cols)


def table_sha256(table: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(table, dtype="<f4").tobytes()).hexdigest()
