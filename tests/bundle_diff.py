"""Byte-level comparison of two bundles (reproducibility and refactoring checks)."""

from __future__ import annotations

from pathlib import Path


def bundle_differences(a: str | Path, b: str | Path) -> list[str]:
    """Every difference between two bundles, one line each, down to the first differing byte and, for
    ONNX files and their external data, the initializer or field it falls in."""
    a, b = Path(a), Path(b)
    names_a = {p.name for p in a.iterdir() if p.is_file()}
    names_b = {p.name for p in b.iterdir() if p.is_file()}
    out = [f"{n}: only in {a}" for n in sorted(names_a - names_b)] + [f"{n}: only in {b}" for n in sorted(names_b - names_a)]
    for name in sorted(names_a & names_b):
        data_a, data_b = (a / name).read_bytes(), (b / name).read_bytes()
        if data_a == data_b:
            continue
        first = next((i for i, (x, y) in enumerate(zip(data_a, data_b)) if x != y), min(len(data_a), len(data_b)))
        line = f"{name}: sizes {len(data_a)} / {len(data_b)}, first difference at byte {first}"
        out.append(line + _explain(a, b, name, first))
    return out


def _explain(a: Path, b: Path, name: str, offset: int) -> str:
    import onnx

    if name.endswith(".onnx"):
        ma, mb = (onnx.load(str(p / name), load_external_data=False) for p in (a, b))
        for attr in ("producer_name", "producer_version", "ir_version", "doc_string", "domain"):
            if getattr(ma, attr) != getattr(mb, attr):
                return f" ({attr}: {getattr(ma, attr)!r} vs {getattr(mb, attr)!r})"
        if [n.name for n in ma.graph.node] != [n.name for n in mb.graph.node]:
            return " (node names or order differ)"
        inits_a = [(i.name, tuple(i.dims)) for i in ma.graph.initializer]
        inits_b = [(i.name, tuple(i.dims)) for i in mb.graph.initializer]
        if inits_a != inits_b:
            return " (initializer names, shapes or order differ)"
        for ia, ib in zip(ma.graph.initializer, mb.graph.initializer):
            if ia.SerializeToString() != ib.SerializeToString():
                return f" (initializer '{ia.name}' differs: inline data or external-data offsets)"
        return " (graph structure or attributes differ)"
    if name.endswith(".data"):
        onnx_name = name[: -len(".data")]
        if (a / onnx_name).is_file():
            for init in onnx.load(str(a / onnx_name), load_external_data=False).graph.initializer:
                info = {e.key: e.value for e in init.external_data}
                start = int(info.get("offset", -1))
                if start <= offset < start + int(info.get("length", 0)):
                    return f" (inside initializer '{init.name}' of {onnx_name}, byte {offset - start})"
    return ""
