"""Progress of a long decoder build a person can read: the layer og is on (k of N), and the bytes written."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from .live_tensors import layer_of

log = logging.getLogger(__name__)

EVERY_SECONDS = 10.0
GIB = float(1 << 30)


class Throttle:
    """True at most every ``seconds`` (and always for the first and last items)."""

    def __init__(self, seconds: float = EVERY_SECONDS):
        self.seconds = seconds
        self.last = time.monotonic()

    def due(self, edge_item: bool = False) -> bool:
        now = time.monotonic()
        if edge_item or now - self.last >= self.seconds:
            self.last = now
            return True
        return False


class LayerProgress:
    """'decoder graph: layer k of N' while og makes the layers (INFO every 10 s and at the end, DEBUG for each)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.start = time.monotonic()
        self.throttle = Throttle()

    def done(self, layer_id: int) -> None:
        k = layer_id + 1
        level = logging.INFO if self.throttle.due(k == self.num_layers) else logging.DEBUG
        log.log(level, "decoder graph: layer %d of %d made (%.0f s)", k, self.num_layers, time.monotonic() - self.start)


@contextlib.contextmanager
def reporting_writes(graph: Any, filename: str, num_layers: int) -> Iterator[None]:
    """While ``ir.save`` writes ``graph``'s initializers, log the bytes written and the layer being written."""
    import onnx_ir as ir

    values = [v for v in graph.initializers.values() if v.const_value is not None]
    tensors = [v.const_value for v in values]
    total = sum(t.nbytes for t in tensors)
    state = {"done": 0, "start": time.monotonic()}
    throttle = Throttle()

    def reporting(index: int, tensor: Any) -> Any:
        def evaluate() -> Any:
            if throttle.due(index in (0, len(tensors) - 1)):
                layer = layer_of(tensor.name or "")
                where = f", layer {layer + 1} of {num_layers}" if layer is not None else ""
                log.info("decoder: writing %s: %.2f of %.2f GiB (tensor %d of %d%s, %.0f s)", filename,
                         state["done"] / GIB, total / GIB, index + 1, len(tensors), where,
                         time.monotonic() - state["start"])
            state["done"] += tensor.nbytes
            return tensor

        return ir.LazyTensor(evaluate, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name)

    for i, (value, tensor) in enumerate(zip(values, tensors)):
        value.const_value = reporting(i, tensor)
    try:
        yield
    finally:
        for value, tensor in zip(values, tensors):
            value.const_value = tensor
    log.info("decoder: wrote %s: %.2f GiB in %.0f s", filename, total / GIB, time.monotonic() - state["start"])
