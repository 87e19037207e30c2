"""The error bound of onnxruntime's 4-bit round-to-nearest quantization, per element (embeddings tests)."""

from __future__ import annotations

import numpy as np


def rtn_error_bound(w_RH: np.ndarray, symmetric: bool, block: int = 32) -> np.ndarray:
    """Per element, the largest |dequant(quant(w)) - w| that round-to-nearest allows, from w's own block along H.

    Symmetric (onnxruntime's scheme): scale = absmax / -8 puts the block's largest-magnitude value on the -8
    end of the grid s * {-8..7}, s = absmax / 8. Values of that sign lie on the grid's span, so rounding costs
    at most s / 2; values of the other sign reach only 7s, so one beyond 7.5s is clipped to 7s: |w| - 7s (<= s).
    Asymmetric: s = (max(max, 0) - min(min, 0)) / 15 and the grid is shifted by the rounded zero point, which
    moves the ends by < s / 2 without clipping anything by more than s / 2: bound s / 2.
    The last block may be partial (H not a multiple of the block size); it is bounded by its own values.
    """
    bound = np.empty(w_RH.shape, dtype=np.float64)
    for start in range(0, w_RH.shape[1], block):
        w = w_RH[:, start : start + block].astype(np.float64)
        if symmetric:
            step = np.abs(w).max(axis=1, keepdims=True) / 8
            bound[:, start : start + block] = np.maximum(step / 2, np.abs(w) - 7 * step)
        else:
            lo = np.minimum(w.min(axis=1, keepdims=True), 0)
            hi = np.maximum(w.max(axis=1, keepdims=True), 0)
            bound[:, start : start + block] = np.broadcast_to((hi - lo) / 15 / 2, w.shape)
    return bound
