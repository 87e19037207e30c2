"""The protobuf wire format of a ModelProto written piece by piece: ``placeholders.WeightStore.save`` streams
each large tensor's real bytes into the file where its placeholder stood, and checks its own encoding (with the
placeholders) against ``SerializeToString`` first, so the output equals what ``onnx.save_model`` would write."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import onnx
from onnx import ModelProto, TensorProto


class Source(Protocol):
    """Where a tensor's real bytes come from (``placeholders.FileSlice`` or ``placeholders.Computed``)."""

    nbytes: int


class WeightStore(Protocol):
    """What the writer asks of ``placeholders.WeightStore``: the source behind a tensor's placeholder, if any."""

    def tensor_source(self, tensor: TensorProto) -> Source | None: ...


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field_number: int) -> bytes:
    return _varint(field_number << 3 | 2)  # wire type 2: length-delimited


def _is_repeated(field: Any) -> bool:
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def _subset(message: Any, keep: Callable[[int], bool]) -> bytes:
    """The encoding of ``message`` with only the fields whose numbers pass ``keep``."""
    part = type(message)()
    for field, value in message.ListFields():
        if not keep(field.number):
            continue
        if _is_repeated(field):
            getattr(part, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(part, field.name).CopyFrom(value)
        else:
            setattr(part, field.name, value)
    return part.SerializeToString()


@dataclass
class _TensorPieces:
    head: bytes  # fields before raw_data
    source: Source
    placeholder: bytes
    tail: bytes  # fields after raw_data


_RAW_DATA = TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_GRAPH = ModelProto.DESCRIPTOR.fields_by_name["graph"].number


def model_pieces(store: WeightStore, model: ModelProto) -> tuple[bytes, bytes, list[bytes | _TensorPieces], bytes, bytes]:
    graph = model.graph
    tensors: list[bytes | _TensorPieces] = []
    for tensor in graph.initializer:
        source = store.tensor_source(tensor)
        if source is None:
            tensors.append(tensor.SerializeToString())
        else:
            tensors.append(_TensorPieces(_subset(tensor, lambda n: n < _RAW_DATA), source, tensor.raw_data,
                                         _subset(tensor, lambda n: n > _RAW_DATA)))
    return (_subset(model, lambda n: n < _GRAPH), _subset(graph, lambda n: n < _INITIALIZER), tensors,
            _subset(graph, lambda n: n > _INITIALIZER), _subset(model, lambda n: n > _GRAPH))


def encode(pieces: tuple, as_placeholders: bool) -> Iterator[bytes | Source]:
    model_head, graph_head, tensors, graph_tail, model_tail = pieces

    def raw_length(t: _TensorPieces) -> int:
        return len(t.placeholder) if as_placeholders else t.source.nbytes

    def tensor_length(t: bytes | _TensorPieces) -> int:
        if isinstance(t, bytes):
            return len(t)
        n = raw_length(t)
        return len(t.head) + len(_tag(_RAW_DATA)) + len(_varint(n)) + n + len(t.tail)

    graph_length = len(graph_head) + len(graph_tail)
    for t in tensors:
        n = tensor_length(t)
        graph_length += len(_tag(_INITIALIZER)) + len(_varint(n)) + n
    yield model_head
    yield _tag(_GRAPH) + _varint(graph_length)
    yield graph_head
    for t in tensors:
        yield _tag(_INITIALIZER) + _varint(tensor_length(t))
        if isinstance(t, bytes):
            yield t
            continue
        yield t.head + _tag(_RAW_DATA) + _varint(raw_length(t))
        yield t.placeholder if as_placeholders else t.source
        yield t.tail
    yield graph_tail
    yield model_tail

