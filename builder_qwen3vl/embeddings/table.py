"""The [V, H] token table read a block of rows at a time: from memory, or from the checkpoint on disk.

The embeddings step never needs the whole table at once: the float formats are converted and the int4
format quantized row block by row block (blocks run along H, so each row is quantized on its own), and the
int4 error check reads a sample of rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ..checkpoint.reader import Checkpoint

ROWS_PER_BLOCK_BYTES = 1 << 26  # rows read (and converted, quantized) together: about 64 MB of the stored table


class TableRows:
    """A [V, H] table whose rows are read on demand (``rows``, ``take``)."""

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, tensor: torch.Tensor | None = None,
                 file: Path | None = None, name: str | None = None) -> None:
        self.shape = shape
        self.dtype = dtype
        self._tensor = tensor
        self._file, self._name = file, name

    @classmethod
    def of_tensor(cls, tensor: torch.Tensor) -> TableRows:
        tensor = tensor.detach()
        return cls((int(tensor.shape[0]), int(tensor.shape[1])), tensor.dtype, tensor=tensor)

    @classmethod
    def of_checkpoint(cls, ckpt: Checkpoint, name: str) -> TableRows:
        info = ckpt.tensors[name]  # the safetensors header, read once with the checkpoint
        file, shape, dtype = info.file, tuple(info.shape), _SAFETENSORS_DTYPES[info.dtype]
        if len(shape) != 2:
            raise ValueError(f"{name}: expected a [vocab, hidden] table, got shape {list(shape)}")
        return cls((shape[0], shape[1]), dtype, file=Path(file), name=name)

    def dim(self) -> int:
        return 2

    @property
    def block_rows(self) -> int:
        """Rows per block: even (int4 codes and zero points of a block then start on a byte)."""
        rows = ROWS_PER_BLOCK_BYTES // max(1, self.shape[1] * self.dtype.itemsize)
        return max(2, rows - rows % 2)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if self._tensor is not None:
            return self._tensor[start:stop]
        from safetensors import safe_open

        with safe_open(str(self._file), framework="pt") as f:
            return f.get_slice(self._name)[start:stop]

    def blocks(self) -> list[tuple[int, int]]:
        step = self.block_rows
        return [(start, min(start + step, self.shape[0])) for start in range(0, self.shape[0], step)]

    def take(self, ids: np.ndarray) -> torch.Tensor:
        """Rows ``ids`` (any order), as ``table[ids]``."""
        if self._tensor is not None:
            return self._tensor[torch.from_numpy(ids)]
        order = np.argsort(ids, kind="stable")
        out = torch.empty((len(ids), self.shape[1]), dtype=self.dtype)
        i = 0
        while i < len(order):
            first = int(ids[order[i]])
            stop = min(first + self.block_rows, self.shape[0])
            j = i
            while j < len(order) and ids[order[j]] < stop:
                j += 1
            block = self.rows(first, stop)
            picked = order[i:j]
            out[torch.from_numpy(picked)] = block[torch.from_numpy(ids[picked] - first)]
            i = j
        return out


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
