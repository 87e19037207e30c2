"""verify's view of an ONNX graph: its inputs and outputs as og sees them, read without tensor data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..ground.bundle_paths import BundlePathError, bundle_file

if TYPE_CHECKING:
    from .report import VerifyReport


FLOAT_TYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Tensor:
    """One graph input or output: og's dtype name and dims (int, symbolic name, or None)."""

    name: str
    dtype: str
    dims: tuple[int | str | None, ...]

    @property
    def rank(self) -> int:
        return len(self.dims)


@dataclass
class Graph:
    path: Path
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    model: Any  # onnx.ModelProto without tensor data


def load_graph(path: Path, report: VerifyReport, bundle: Path | None = None) -> Graph | None:
    """The graph at ``path`` without tensor data, once its external data files are present, whole and inside
    ``bundle`` (default: the model's folder); None after recording a failure."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a truncated or foreign file: protobuf raises its own types
        report.failures.append(f"{path.name}: not a readable ONNX model ({type(e).__name__}: {e})")
        return None
    if not external_data_present(path, proto, report, path.parent if bundle is None else bundle):
        return None
    graph = Graph(path, tensors(proto.graph.input), tensors(proto.graph.output), proto)
    initializers = {init.name for init in proto.graph.initializer}
    for name in list(graph.inputs):  # old-style graphs list initializers as inputs too
        if name in initializers:
            del graph.inputs[name]
    return graph


def external_data_present(path: Path, proto: Any, report: VerifyReport, bundle: Path) -> bool:
    """Each external data file the graph names lies inside ``bundle`` and holds every byte it is asked for."""
    from onnx import TensorProto

    needed: dict[str, int] = {}
    for init in proto.graph.initializer:
        if init.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        location = info.get("location", "")
        needed[location] = max(needed.get(location, 0), end)
    for location, end in needed.items():
        try:
            data = bundle_file(bundle, location, f"{path.name} external data location", base=path.parent)
        except BundlePathError as e:
            report.escape(str(e))
            return False
        if not data.is_file():
            report.failures.append(f"{location}: missing (external data of {path.name})")
            return False
        if data.stat().st_size < end:
            report.failures.append(f"{location}: truncated: {path.name} needs {end} bytes, the file has {data.stat().st_size}")
            return False
    return True


def tensors(values: Any) -> dict[str, Tensor]:
    from onnx import helper

    out = {}
    for value in values:
        tensor_type = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        )
        dtype = str(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)) if tensor_type.elem_type else "?"
        out[value.name] = Tensor(value.name, "bfloat16" if tensor_type.elem_type == 16 else dtype, dims)
    return out


def expect(graph: Graph, kind: str, name: str, report: VerifyReport, *, dtypes: tuple[str, ...],
            rank: int, fixed: dict[int, int] | None = None, loose: dict[int, int] | None = None) -> Tensor | None:
    """Check one named graph input/output; record a failure naming the file, tensor and expectation.

    ``fixed`` dims must be exactly that size; ``loose`` dims may also be symbolic (og's KV head dim is).
    """
    table = graph.inputs if kind == "input" else graph.outputs
    tensor = table.get(name)
    where = f"{graph.path.name} {kind} '{name}'"
    if tensor is None:
        report.failures.append(f"{where}: missing (graph {kind}s: {', '.join(table) or 'none'})")
        return None
    problems = []
    if tensor.dtype not in dtypes:
        problems.append(f"dtype {tensor.dtype}, expected {' or '.join(dtypes)}")
    if tensor.rank != rank:
        problems.append(f"rank {tensor.rank} {list(tensor.dims)}, expected rank {rank}")
    else:
        for axis, size in (fixed or {}).items():
            if tensor.dims[axis] != size:
                problems.append(f"dim {axis} is {tensor.dims[axis]!r}, expected {size}")
        for axis, size in (loose or {}).items():
            if isinstance(tensor.dims[axis], int) and tensor.dims[axis] != size:
                problems.append(f"dim {axis} is {tensor.dims[axis]}, expected {size}")
    if problems:
        report.failures.append(f"{where}: " + "; ".join(problems))
        return None
    return tensor


def unfed_inputs(graph: Graph, fed: set[str], report: VerifyReport) -> None:
    missing = sorted(set(graph.inputs) - fed)
    if missing:
        report.failures.append(f"{graph.path.name}: graph input(s) {', '.join(missing)} are not named in genai_config.json, og will not feed them")


def dtype_of(graph: Graph, names: dict[str, str], key: str) -> str | None:
    tensor = graph.inputs.get(names.get(key, key))
    return tensor.dtype if tensor else None


_NORM_GAMMA_INPUT = {"SimplifiedLayerNormalization": 1, "LayerNormalization": 1, "RMSNormalization": 1,
                     "SkipSimplifiedLayerNormalization": 2, "SkipLayerNormalization": 2}


def text_hidden_size(decoder: Any) -> int | None:
    """H from the decoder graph: the width of the final norm's weight (the last norm before the logits)."""
    producers = {out: node for node in decoder.graph.node for out in node.output}
    shapes = {init.name: tuple(init.dims) for init in decoder.graph.initializer}
    start = [o.name for o in decoder.graph.output if "logits" in o.name] or [decoder.graph.output[0].name]
    queue, seen = list(start), set()
    while queue:  # breadth-first towards the inputs: the first norm met is the final one
        name = queue.pop(0)
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        index = _NORM_GAMMA_INPUT.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in shapes:
            return int(shapes[node.input[index]][-1])
        queue.extend(node.input)
    return None
