"""The report of benchmarks/peers.py: its tables (per checkpoint, and per layer / extrapolated to the full layer count
for the MoE cuts), the markdown section for docs/benchmarks.md and the bar chart beside it.

Everything here reads the report dictionary peers.py writes (``--json``); nothing is measured.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

ENGINES = ("ours", "llama.cpp", "openvino")
FULL_LAYERS = 48

def summary(run: dict[str, Any]) -> str:
    keys = ("ttft_s", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_bytes")
    return ", ".join(f"{k}={run[k]:.3g}" for k in keys if isinstance(run.get(k), (int, float)))


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: statistics.median(r[k] for r in runs if isinstance(r.get(k), (int, float))) for k in sorted(keys)}


def disk_sizes(bundle: Path, gguf_dir: Path, ov_dir: Path) -> dict[str, int]:
    """Bytes each engine reads: weights and graphs, not its logs and side files."""
    def total(paths: list[Path]) -> int:
        return sum(p.stat().st_size for p in paths if p.is_file() and not p.name.endswith((".json", ".log")) or
                   p.name in ("genai_config.json", "tokenizer.json", "config.json"))

    out = {}
    if bundle.exists():
        out["ours"] = total(list(bundle.iterdir()))
    if (gguf_dir / "model-Q4_0.gguf").exists():
        out["llama.cpp"] = total([gguf_dir / "model-Q4_0.gguf", gguf_dir / "mmproj-model-f16.gguf"])
    if ov_dir.exists():
        out["openvino"] = total(list(ov_dir.iterdir()))
    return out


GIB = 1 << 30
# (row label, figure key ("{image}" is the first picture's name), median key, unit, lower is better)
ROWS = (("TTFT {0} picture + 32-token question", "ttft_{0}", "ttft_s", "s", True),
        ("TTFT {1} picture + 32-token question", "ttft_{1}", "ttft_s", "s", True),
        ("TTFT {0}, the same question again (prefix cache on)", "ttft_cached_{0}", "ttft_s", "s", True),
        ("prefill 256 text tokens, depth 0", "text", "prefill_tokens_per_s", "tok/s", False),
        ("decode, depth 256 (32 steps)", "text", "decode_tokens_per_s", "tok/s", False),
        ("peak RSS, {0} TTFT process", "ttft_{0}", "peak_rss_bytes", "GiB", True),
        ("files on disk", None, "disk", "GiB", True))


def figure_values(results: dict[str, Any], names: list[str]) -> list[tuple[str, str, bool, dict[str, float | None]]]:
    """Per row: label, unit, lower-is-better, {engine: value or None}."""
    out = []
    for label, key, stat, unit, lower in ROWS:
        vals: dict[str, float | None] = {}
        for e in ENGINES:
            if key is None:
                v = results.get("disk_bytes", {}).get(e)
            else:
                v = results.get("figures", {}).get(key.format(*names), {}).get(e, {}).get("median", {}).get(stat)
            vals[e] = v / GIB if v is not None and unit == "GiB" else v
        out.append((label.format(*names), unit, lower, vals))
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def table(rows: list[tuple[str, str, bool, dict[str, float | None]]]) -> str:
    lines = ["| figure | unit | ours | llama.cpp | OpenVINO | ours/llama.cpp | ours/OpenVINO |", "|---|---|---|---|---|---|---|"]
    for label, unit, _, v in rows:
        lines.append(f"| {label} | {unit} | {_fmt(v['ours'])} | {_fmt(v['llama.cpp'])} | {_fmt(v['openvino'])} | "
                     f"{_ratio(v['ours'], v['llama.cpp'])} | {_ratio(v['ours'], v['openvino'])} |")
    return "\n".join(lines)


def extrapolated(report: dict[str, Any]) -> list[tuple[str, str, bool, dict[str, float | None]]] | None:
    """Per layer (the difference of the two smallest cuts) and at FULL_LAYERS, linear in the layer count; rates
    through their seconds per token."""
    layers = [n for n in report.get("layers") or [] if f"{report['shape']}-L{n}" in report["instances"]]
    if len(layers) < 2:
        return None
    la, lb = layers[:2]
    names = image_names(report)
    a = figure_values(report["instances"][f"{report['shape']}-L{la}"], names)
    b = figure_values(report["instances"][f"{report['shape']}-L{lb}"], names)
    out = []
    for (label, unit, lower, va), (_, _, _, vb) in zip(a, b):
        per, full = {}, {}
        for e in ENGINES:
            x, y = va[e], vb[e]
            if x is None or y is None:
                per[e] = full[e] = None
                continue
            if unit == "tok/s":
                x, y = 1 / x, 1 / y
            per[e] = (y - x) / (lb - la)
            f = x + (FULL_LAYERS - la) * per[e]
            full[e] = 1 / f if unit == "tok/s" and f > 0 else f
            if unit == "tok/s":
                per[e] *= 1e3  # ms per token per layer
        out.append((f"{label}: per layer", "ms/tok" if unit == "tok/s" else unit, lower, per))
        out.append((f"{label}: {FULL_LAYERS} layers (extrapolated)", unit, lower, full))
    return out


def image_names(report: dict[str, Any]) -> list[str]:
    for res in report["instances"].values():
        if res.get("inputs"):
            return [im["name"] for im in res["inputs"]["images"]]
    return ["448x448", "1000x667"]


def tables(report: dict[str, Any]) -> str:
    parts = []
    for name, res in report["instances"].items():
        parts += [f"### {name}", "", table(figure_values(res, image_names(report))), ""]
        for engine, why in res.get("skipped", {}).items():
            parts.append(f"- {engine} skipped: {why}")
        for key, fig in res.get("figures", {}).items():
            for engine, r in fig.items():
                if "error" in r and not r["error"].startswith("skipped"):
                    parts.append(f"- {key} {engine}: {r['error']}")
        parts.append("")
    ext = extrapolated(report)
    if ext:
        parts += [f"### {report['shape']}: per layer and at {FULL_LAYERS} layers", "", table(ext), ""]
    return "\n".join(parts)


def markdown(report: dict[str, Any], heading: str, png: str) -> str:
    cpu = report["cpu"]
    v = report["versions"]
    ov = v["openvino"]
    return "\n".join([
        heading, "",
        (f"`{report['command']}`, {report['rounds']} round(s) (medians), {report['threads']} threads per engine, on "
        f"{cpu['model']} ({', '.join(cpu['isa']) or 'no AVX2'}; {cpu['logical_cpus']} logical CPUs); "
        f"{report['total_s'] / 60:.0f} min, {report['started'][:16]}."), "",
        (f"Ours: the bundles {', '.join(sorted({Path(i.get('ours_bundle', '?')).name for i in report['instances'].values()}))} "
        f"(the package at {v['ours']['commit']}), onnxruntime {v['ours']['onnxruntime']}, onnxruntime-genai "
        f"{v['ours']['onnxruntime_genai']}, int4 bundle. llama.cpp: {v['llama.cpp']['source']}, Release, "
        f"GGML_NATIVE, Q4_0 text + f16 mmproj. OpenVINO: openvino {ov.get('openvino')}, openvino-genai "
        f"{ov.get('openvino-genai')}, optimum-intel {ov.get('optimum-intel')}, int4 data-free export. Random weights, "
        "the released config; every engine runs in its own process, round-robin per figure."), "",
        ("TTFT: the model loaded, one untimed warm-up call before (ours, OpenVINO; llama.cpp runs one question per "
        "process). Ours: picture file to first token (og processor + vision + prefill + sampling); llama.cpp: "
        "llama-mtmd-cli's printed prompt-eval clock (`-lv 4`), which spans the image encode and every prompt "
        "decode, without reading and resizing the picture; OpenVINO: perf_metrics.get_ttft() of VLMPipeline "
        "(prefix cache off except on its own row). Prefill and decode: llama-bench for llama.cpp, perf_metrics "
        "(TTFT, TPOT) for OpenVINO, og.Generator for ours. Ratios are ours/peer: below 1 is ours faster or "
        "smaller for s and GiB, above 1 is ours faster for tok/s."), "",
        tables(report), f"![ours, llama.cpp and OpenVINO GenAI]({png})", ""])


def plot(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = image_names(report)
    shown = [0, 1, 3, 4, 5]  # ROWS drawn: two TTFTs, prefill, decode, RSS
    insts = list(report["instances"].items())
    fig, axes = plt.subplots(len(insts), len(shown), figsize=(3.2 * len(shown), 2.8 * len(insts)), squeeze=False)
    for row, (name, res) in enumerate(insts):
        values = figure_values(res, names)
        for col, i in enumerate(shown):
            label, unit, _, vals = values[i]
            ax = axes[row][col]
            ys = [vals[e] or 0 for e in ENGINES]
            ax.bar(range(len(ENGINES)), ys, color=["#1f77b4", "#ff7f0e", "#2ca02c"])
            ax.set_xticks(range(len(ENGINES)), ["ours", "llama.cpp", "OpenVINO"], fontsize=8)
            ax.set_title(f"{name}: {label}" if len(label) < 30 else f"{name}\n{label}", fontsize=8)
            ax.set_ylabel(unit, fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


