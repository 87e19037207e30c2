"""Counting the checkpoint tensors alive, by bytes and by decoder layer: the memory tests' witness that the
decoder build never holds more than a layer of the checkpoint at once (lazy_weights.LIVE)."""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class LiveTensors:
    """Bytes and layers of the checkpoint tensors handed out and still alive (for the memory tests)."""

    bytes: int = 0
    peak_bytes: int = 0
    layers: dict[int, int] = field(default_factory=dict)  # layer -> live tensors
    peak_layers: int = 0
    reads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, name: str, tensor: Any) -> None:
        nbytes = tensor.untyped_storage().nbytes()
        layer = layer_of(name)
        with self.lock:
            self.reads += 1
            self.bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.bytes)
            if layer is not None:
                self.layers[layer] = self.layers.get(layer, 0) + 1
                self.peak_layers = max(self.peak_layers, len(self.layers))
        weakref.finalize(tensor, self._released, nbytes, layer)

    def _released(self, nbytes: int, layer: int | None) -> None:
        with self.lock:
            self.bytes -= nbytes
            if layer is not None:
                self.layers[layer] -= 1
                if not self.layers[layer]:
                    del self.layers[layer]


def layer_of(name: str) -> int | None:
    match = _LAYER.search(name.replace("/", "."))
    return int(match.group(1)) if match else None
