"""ONNX models whose large tensors are placeholders: the graph in memory, the weights on disk, read one at a time.

The vision export edits an ``onnx.ModelProto`` with protobuf, onnx and onnxruntime's quantizers, and protobuf
holds every byte of a message in memory (and keeps an edited message's old bytes until the message is
freed). Here every tensor of at least ``INLINE_BELOW`` bytes carries a ``PLACEHOLDER_BYTES``-long stand-in
in ``raw_data`` instead of its bytes: a marker and an index into a ``WeightStore``, whose entry says how to
produce the bytes (a slice of a file, or a function of another entry: a transpose, a cast). Everything
that only moves tensors around (graph edits, onnx's external-data round trips inside onnxruntime's
quantizers, shape inference) sees the same fields as with the real bytes, and a placeholder is at least
as large as onnx's external-data threshold (1024 bytes) so it is moved to and from external files exactly
like the tensor it stands for; what reads values (``onnx.numpy_helper.to_array``, ``onnx_ir.from_proto``)
gets the real array while ``WeightStore.readable`` is active.

``save_model`` writes the model as ``onnx.save_model`` would have written it with the real bytes, one
tensor at a time: in one file (the protobuf encoding, with each placeholder's field replaced by the real
bytes and the enclosing lengths adjusted) or with onnx's external data. It first checks its own encoding
against protobuf's on the placeholder model, so a protobuf that orders fields differently fails loudly
instead of writing a different file.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, external_data_helper

log = logging.getLogger(__name__)

PLACEHOLDER_BYTES = 1024  # onnx moves raw_data of >= 1024 bytes (sys.getsizeof) to external files
INLINE_BELOW = 1 << 16  # smaller tensors keep their bytes
_MAGIC = b"\x00builder_qwen3vl.placeholder\x00"
_CHUNK = 1 << 26  # bytes per write when a source is copied from a file


@dataclass(frozen=True)
class FileSlice:
    """``length`` bytes at ``offset`` of ``path``."""

    path: Path
    offset: int
    length: int

    @property
    def nbytes(self) -> int:
        return self.length

    def chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.length
            while left:
                data = f.read(min(left, _CHUNK))
                if not data:
                    raise OSError(f"{self.path}: ended {left} bytes early (tensor at offset {self.offset})")
                left -= len(data)
                yield data

    def read(self) -> bytes:
        return b"".join(self.chunks())


@dataclass(frozen=True)
class Computed:
    """The bytes of ``fn()`` (an array in the tensor's dtype and layout), computed when needed."""

    fn: Callable[[], np.ndarray]
    nbytes: int

    def chunks(self) -> Iterator[bytes]:
        yield self.read()

    def read(self) -> bytes:
        data = np.ascontiguousarray(self.fn()).tobytes()
        if len(data) != self.nbytes:
            raise RuntimeError(f"placeholder source gave {len(data)} bytes, expected {self.nbytes}")
        return data


Source = FileSlice | Computed


class WeightStore:
    """The sources of one model's placeholders."""

    def __init__(self) -> None:
        self._token = secrets.token_bytes(8)
        self._sources: list[Source] = []

    # -- placeholders

    def add(self, source: Source) -> bytes:
        """A placeholder for ``source``'s bytes."""
        index = len(self._sources)
        self._sources.append(source)
        head = _MAGIC + self._token + index.to_bytes(8, "little")
        return head + b"\0" * (PLACEHOLDER_BYTES - len(head))

    def source(self, raw: bytes) -> Source | None:
        if len(raw) != PLACEHOLDER_BYTES or not raw.startswith(_MAGIC):
            return None
        token, index = raw[len(_MAGIC) : len(_MAGIC) + 8], raw[len(_MAGIC) + 8 : len(_MAGIC) + 16]
        if token != self._token:
            raise RuntimeError("a placeholder of another model's weight store")
        return self._sources[int.from_bytes(index, "little")]

    def tensor_source(self, tensor: TensorProto) -> Source | None:
        return self.source(tensor.raw_data) if tensor.HasField("raw_data") else None

    def nbytes(self, tensor: TensorProto) -> int:
        """Bytes of ``tensor``'s raw data, the real ones for a placeholder."""
        source = self.tensor_source(tensor)
        return source.nbytes if source is not None else len(tensor.raw_data)

    def array(self, tensor: TensorProto) -> np.ndarray:
        """``onnx.numpy_helper.to_array(tensor)`` of the real tensor."""
        source = self.tensor_source(tensor)
        if source is None:
            return _ORIGINAL_TO_ARRAY(tensor)
        real = TensorProto()
        real.CopyFrom(tensor)
        real.raw_data = source.read()
        return _ORIGINAL_TO_ARRAY(real)

    def derived(self, tensor: TensorProto, fn: Callable[[np.ndarray], np.ndarray], nbytes: int) -> bytes:
        """A placeholder for ``fn`` of ``tensor``'s real array (``nbytes`` long in its new dtype)."""
        return self.add(Computed(lambda: fn(self.array(tensor)), nbytes))

    def tensor(self, like: np.ndarray, shape: tuple[int, ...], name: str, fn: Callable[[], np.ndarray]) -> TensorProto:
        """``onnx.numpy_helper.from_array`` of the [shape] array ``fn()`` (dtype of ``like``), as a placeholder
        when it is large."""
        tensor = onnx.numpy_helper.from_array(np.zeros((0,), like.dtype), name)
        del tensor.dims[:]
        tensor.dims.extend(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * like.dtype.itemsize
        if nbytes < INLINE_BELOW:
            tensor.raw_data = np.ascontiguousarray(fn()).tobytes()
        else:
            tensor.raw_data = self.add(Computed(fn, nbytes))
        return tensor

    # -- reading values through onnx / onnxruntime

    @contextlib.contextmanager
    def readable(self, on_read: Callable[[str], None] | None = None) -> Iterator[None]:
        """While active, ``onnx.numpy_helper.to_array`` and ``onnx_ir.from_proto`` read placeholders as the real
        tensors (the two ways onnxruntime's quantizers read weights); ``on_read(name)`` is told of each read."""
        import onnx_ir

        from_proto = onnx_ir.from_proto

        def real(tensor: TensorProto) -> np.ndarray:
            array = self.array(tensor)
            if on_read is not None:
                on_read(tensor.name)
            return array

        def to_array(tensor: TensorProto, base_dir: str = "") -> np.ndarray:
            if isinstance(tensor, TensorProto) and self.tensor_source(tensor) is not None:
                return real(tensor)
            return _ORIGINAL_TO_ARRAY(tensor, base_dir)

        def ir_from_proto(proto: Any) -> Any:
            if isinstance(proto, TensorProto) and self.tensor_source(proto) is not None:
                return onnx_ir.Tensor(real(proto), name=proto.name)
            return from_proto(proto)

        onnx.numpy_helper.to_array = to_array
        onnx_ir.from_proto = ir_from_proto
        try:
            yield
        finally:
            onnx.numpy_helper.to_array = _ORIGINAL_TO_ARRAY
            onnx_ir.from_proto = from_proto

    # -- loading

    def load(self, path: str | os.PathLike[str]) -> ModelProto:
        """``onnx.load(path)`` with its external data: small tensors read, large ones as placeholders of their
        slices of the data files (which must stay until the model is saved)."""
        model = onnx.load(str(path), load_external_data=False)
        base = Path(path).parent
        for tensor in external_data_helper._get_all_tensors(model):
            if not external_data_helper.uses_external_data(tensor):
                continue
            info = external_data_helper.ExternalDataInfo(tensor)
            file = base / info.location
            offset = info.offset or 0
            length = info.length if info.length is not None else file.stat().st_size - offset
            piece = FileSlice(file, offset, length)
            data = piece.read() if length < INLINE_BELOW or length == PLACEHOLDER_BYTES else None
            if data is not None and (length < INLINE_BELOW or self.source(data) is not None):
                tensor.raw_data = data  # small, or a placeholder written out by a quantizer: comes back as itself
            else:
                tensor.raw_data = self.add(piece)
            # as onnx.external_data_helper.load_external_data_for_tensor leaves a loaded tensor
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]
        return model

    # -- saving

    def save(self, model: ModelProto, path: str | os.PathLike[str], *, external_data: str | None = None,
             size_threshold: int = 1024, progress: Callable[[int, int], None] | None = None) -> None:
        """``onnx.save_model(model, path)`` with the real bytes, or with ``external_data`` (a file name beside
        ``path``): ``onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
        location=external_data, size_threshold=size_threshold)``. ``model`` is changed as onnx changes it
        (external data: the large tensors then point into the written file). ``progress(done, total)`` gets the
        bytes written."""
        _check_placeholders_in_initializers(self, model)
        path = Path(path)
        total = sum(self.nbytes(t) for t in model.graph.initializer)
        written = 0

        def report(n: int) -> None:
            nonlocal written
            written += n
            if progress is not None:
                progress(written, total)

        if external_data is None:
            self._write_one_file(model, path, report)
        else:
            self._write_external(model, path, external_data, size_threshold, report)

    def _write_external(self, model: ModelProto, path: Path, location: str, size_threshold: int,
                        report: Callable[[int], None]) -> None:
        # onnx.save_model's steps: convert_model_to_external_data, then write_external_data_tensors, then the proto.
        for tensor in external_data_helper._get_initializer_tensors(model):
            if tensor.HasField("raw_data") and _getsizeof_raw(self.nbytes(tensor)) >= size_threshold:
                external_data_helper.set_external_data(tensor, location)
        data_path = path.parent / location
        with open(data_path, "ab") as data:
            for tensor in external_data_helper._get_all_tensors(model):
                if not (external_data_helper.uses_external_data(tensor) and tensor.HasField("raw_data")):
                    continue
                offset = data.tell()
                source = self.tensor_source(tensor)
                for chunk in source.chunks() if source is not None else [tensor.raw_data]:
                    data.write(chunk)
                    report(len(chunk))
                external_data_helper.set_external_data(tensor, location, offset, data.tell() - offset)
                tensor.ClearField("raw_data")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())

    def _write_one_file(self, model: ModelProto, path: Path, report: Callable[[int], None]) -> None:
        from .proto_stream import encode, model_pieces  # the writer's wire format, kept apart

        pieces = model_pieces(self, model)
        expected = model.SerializeToString()
        as_placeholders = b"".join(encode(pieces, True))
        if as_placeholders != expected:  # our field order is not protobuf's: refuse rather than write other bytes
            raise RuntimeError("placeholders: the piecewise protobuf encoding differs from SerializeToString")
        del expected, as_placeholders
        with open(path, "wb") as f:
            for piece in encode(pieces, False):
                if isinstance(piece, bytes):
                    f.write(piece)
                else:
                    for chunk in piece.chunks():
                        f.write(chunk)
                        report(len(chunk))


_ORIGINAL_TO_ARRAY = onnx.numpy_helper.to_array


def _getsizeof_raw(nbytes: int) -> int:
    return sys.getsizeof(b"") + nbytes  # what sys.getsizeof(tensor.raw_data) gives for bytes of that length


def _check_placeholders_in_initializers(store: WeightStore, model: ModelProto) -> None:
    """Placeholders may only be top-level initializers (the only tensors the piecewise writer substitutes)."""
    others = itertools.chain(external_data_helper._get_attribute_tensors(model),
                             (s.values for s in model.graph.sparse_initializer),
                             (t for node in model.graph.node for a in node.attribute for g in [*a.graphs, a.g]
                              for t in g.initializer))
    for tensor in others:
        if store.tensor_source(tensor) is not None:
            raise RuntimeError(f"placeholder tensor {tensor.name!r} outside the graph's initializers")


# ---- piecewise protobuf encoding: message = fields in field-number order, each repeated field in order.
