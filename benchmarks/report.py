"""docs/benchmarks.md, docs/benchmarks.json and the two plots, from WORK/results/*.json."""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from common import IMAGE_SIZES, Settings, read_result

GIB = 2**30
FINDINGS = Path(__file__).with_name("findings.md")  # hand-written analysis, appended to the report


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    versions = {}
    for pkg in ("torch", "transformers", "onnxruntime", "onnxruntime-genai", "onnx", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "?"
    versions["python"] = platform.python_version()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "versions": versions, "load_average": os.getloadavg()}


def collect(s: Settings) -> dict[str, Any]:
    names = ("build", "build_og_text", "bandwidth", "files", "vision_ours", "vision_hf_fp32", "vision_hf_bf16",
             "vision_variants", "ttft_og", "ttft_hf", "decode_ort", "decode_og", "threads_og", "decode_hf_fp32", "decode_hf_bf16", "profile_decode")
    return {n: read_result(s, n) for n in names}


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def kv_bytes_per_token_of_context(s: Settings) -> int:
    genai = json.loads((s.bundle / "genai_config.json").read_text())["model"]["decoder"]
    itemsize = 4  # float32 KV on CPU int4
    return genai["num_hidden_layers"] * 2 * genai["num_key_value_heads"] * genai["head_size"] * itemsize


def derive(s: Settings, r: dict[str, Any]) -> dict[str, Any]:
    """Figures, ratios and targets from the raw phase results."""
    f: dict[str, Any] = {"images": {}, "contexts": {}}
    gbps = max((g for g in (_get(r, "bandwidth", "GBps"), _get(r, "profile_decode", "bandwidth_end", "GBps")) if g), default=None)
    weights = _get(r, "files", "decoder_bytes", "read_per_token")
    kv_per_pos = kv_bytes_per_token_of_context(s) if s.bundle.exists() else None
    for w, h in IMAGE_SIZES:
        name = f"{w}x{h}"
        ours = _get(r, "vision_ours", "images", name)
        hf32 = _get(r, "vision_hf_fp32", "images", name)
        hf16 = _get(r, "vision_hf_bf16", "images", name)
        t_og, t_hf = _get(r, "ttft_og", name), _get(r, "ttft_hf", name)
        f["images"][name] = {
            "patches": _get(ours, "patches"),
            "vision_ours_s": _get(ours, "median_s"), "vision_ours_pps": _get(ours, "patches_per_s"),
            "vision_hf_fp32_s": _get(hf32, "median_s"), "vision_hf_fp32_pps": _get(hf32, "patches_per_s"),
            "vision_hf_bf16_s": _get(hf16, "median_s"), "vision_hf_bf16_pps": _get(hf16, "patches_per_s"),
            "vision_speedup_vs_hf_fp32": _ratio(_get(ours, "patches_per_s"), _get(hf32, "patches_per_s")),
            "ttft_ours_s": _get(t_og, "median_s"), "ttft_hf_fp32_s": _get(t_hf, "median_s"),
            "ttft_ratio_ours_over_hf": _ratio(_get(t_og, "median_s"), _get(t_hf, "median_s")),
            "prompt_tokens": _get(t_og, "prompt_tokens"),
            "ttft_processor_s": _get(t_og, "processor_s"),
        }
    for ctx in s.contexts:
        c = str(ctx)
        og_rt = _get(r, "decode_og", c, "tokens_per_s")
        ours = _get(r, "decode_ort", "ours", c, "tokens_per_s")
        og_text = _get(r, "decode_ort", "og_text", c, "tokens_per_s")
        hf32 = _get(r, "decode_hf_fp32", c, "tokens_per_s")
        hf16 = _get(r, "decode_hf_bf16", c, "tokens_per_s")
        bound = gbps * 1e9 / weights if gbps and weights else None
        bound_kv = gbps * 1e9 / (weights + kv_per_pos * ctx) if gbps and weights and kv_per_pos else None
        f["contexts"][c] = {
            "og_runtime_tps": og_rt, "ort_loop_ours_tps": ours, "ort_loop_og_text_tps": og_text,
            "hf_eager_fp32_tps": hf32, "hf_eager_bf16_tps": hf16,
            "ours_over_og_text": _ratio(ours, og_text),
            "og_runtime_over_hf_fp32": _ratio(og_rt, hf32), "og_runtime_over_hf_bf16": _ratio(og_rt, hf16),
            "bound_weights_tps": bound, "bound_weights_kv_tps": bound_kv,
            "og_runtime_fraction_of_bound": _ratio(og_rt, bound), "og_runtime_fraction_of_bound_with_kv": _ratio(og_rt, bound_kv),
            "og_runtime_prefill_s": _get(r, "decode_og", c, "prefill_s"), "hf_fp32_prefill_s": _get(r, "decode_hf_fp32", c, "prefill_s"),
        }
    bundle_total = sum((_get(r, "files", "bundle_files") or {}).values())
    f["bundle_bytes"] = bundle_total
    f["decoder_read_bytes_per_token"] = weights
    f["kv_bytes_per_context_position"] = kv_per_pos
    f["bandwidth_GBps"] = gbps
    f["targets"] = targets(s, r, f)
    return f


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(s: Settings, r: dict[str, Any], f: dict[str, Any]) -> list[dict[str, Any]]:
    def t(name: str, value: float | None, goal: str, ok: bool | None) -> dict[str, Any]:
        return {"target": name, "value": value, "goal": goal, "met": ok}

    # The targets at the 2B shape on this machine kind (ratios from one run).
    out = []
    rss = _get(r, "build", "peak_rss_bytes")
    out.append(t("build peak RSS (GiB)", rss and rss / GIB, "<= 12", None if rss is None else rss / GIB <= 12))
    first = str(min(s.contexts))
    tps = f["contexts"][first]["og_runtime_tps"]
    out.append(t(f"decode tok/s, og runtime, context {first}", tps, ">= 18", None if tps is None else tps >= 18))
    x = f["contexts"][first]["og_runtime_over_hf_bf16"]
    out.append(t(f"decode og runtime / HF eager bf16, context {first}", x, ">= 5", None if x is None else x >= 5))
    frac = f["contexts"][first]["og_runtime_fraction_of_bound"]
    out.append(t(f"decode og runtime / bandwidth bound (weights), context {first}", frac, "report", None))
    for name, v in f["images"].items():
        x = v["vision_speedup_vs_hf_fp32"]
        out.append(t(f"vision patches/s ours / HF fp32, {name}", x, ">= 1.5", None if x is None else x >= 1.5))
    for (name, v), goal in zip(f["images"].items(), (0.6, 0.7)):
        x = v["ttft_ratio_ours_over_hf"]
        out.append(t(f"TTFT ours / HF fp32, {name} + 32-token question", x, f"<= {goal}", None if x is None else x <= goal))
    b = f["bundle_bytes"]
    out.append(t("bundle on disk (GB)", b and b / 1e9, "<= 1.8", None if not b else b / 1e9 <= 1.8))
    return out


def _n(r: dict[str, Any], *keys: str) -> int:
    return len(_get(r, *keys, "times_s") or [])


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _save_plot(plt: Any, fig: Any, ax: Any, path: Path) -> Path:
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(s: Settings, f: dict[str, Any], docs: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctxs = [int(c) for c in f["contexts"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [("og_runtime_tps", "ours, og runtime"), ("ort_loop_ours_tps", "ours model.onnx, plain ORT loop"),
              ("ort_loop_og_text_tps", "og builder text-only, plain ORT loop"), ("hf_eager_fp32_tps", "HF eager fp32"),
              ("hf_eager_bf16_tps", "HF eager bf16"), ("bound_weights_kv_tps", "bandwidth bound (weights + KV)")]
    for key, label in series:
        pts = [(c, f["contexts"][str(c)][key]) for c in ctxs if f["contexts"][str(c)][key]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label, linestyle="--" if "bound" in key else "-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"Qwen3-VL {s.shape} decode, int4 CPU, 2 threads")
    decode_png = _save_plot(plt, fig, ax, docs / "benchmarks_decode.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    imgs = list(f["images"].items())
    for key, label in (("ttft_ours_s", "ours, og runtime (int4)"), ("ttft_hf_fp32_s", "HF fp32 sdpa")):
        pts = [(v["patches"], v[key]) for _, v in imgs if v[key] and v["patches"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    for name, v in imgs:
        if v["patches"]:
            ax.annotate(name, (v["patches"], v["ttft_ours_s"] or 0), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel("image patches (16x16)")
    ax.set_ylabel("time to first token (s)")
    ax.set_title(f"Qwen3-VL {s.shape}: one image + 32-token question")
    ttft_png = _save_plot(plt, fig, ax, docs / "benchmarks_ttft.png")
    return [decode_png.name, ttft_png.name]


def markdown(s: Settings, r: dict[str, Any], f: dict[str, Any], m: dict[str, Any], command: str,
             started: datetime.datetime, total_s: float, plots: list[str]) -> str:
    v = m["versions"]
    L: list[str] = [f"# Benchmarks: Qwen3-VL {s.shape}, int4 CPU bundle vs Hugging Face", ""]
    L += ["Generated by `benchmarks/run.py` (not part of CI). Random-weight checkpoint of the real config "
          f"(`{s.checkpoint}`); all figures measured side by side in the run described here.", ""]
    note = Path(s.work) / "run_note.md"
    if note.exists():  # how the run was made, when it took more than one invocation
        L += [note.read_text().strip(), ""]
    L += ["| | |", "|---|---|",
          f"| date | {started.strftime('%Y-%m-%d %H:%M %Z')} (run took {total_s / 60:.1f} min) |",
          f"| command | `{command}` |",
          f"| CPU | {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / GIB:.1f} GiB RAM |",
          "| versions | " + ", ".join(f"{k} {v[k]}" for k in v) + " |",
          f"| threads | {s.threads} (onnxruntime intra-op, torch) |",
          f"| load average at report time | {', '.join(f'{x:.2f}' for x in m['load_average'])} |",
          "| noise | each ratio compares figures taken minutes apart in the same run on a shared 2-core VM; "
          "repeated runs moved single figures by up to 25 % (HF fp32 TTFT at 1000x667: 32.2 s and 40.4 s) |", ""]

    L += ["## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in f["targets"]:
        L.append(f"| {t['target']} | {_fmt(t['value'])} | {t['goal']} | {'—' if t['met'] is None else ('yes' if t['met'] else '**no**')} |")
    L.append("")

    b, bo = r.get("build") or {}, r.get("build_og_text") or {}
    L += ["## Build (`python -m builder_qwen3vl -i CKPT -o OUT -p int4 -e cpu`)", "",
          "| | ours (full bundle) | og builder, text-only decoder |", "|---|---|---|",
          f"| wall time | {_fmt(b.get('wall_s'), 1)} s | {_fmt(bo.get('wall_s'), 1)} s |",
          f"| peak RSS | {_fmt(b.get('peak_rss_bytes', 0) / GIB)} GiB | {_fmt(bo.get('peak_rss_bytes', 0) / GIB)} GiB |", ""]
    if b.get("steps_s"):
        L += ["Steps (from the build log): " + "; ".join(f"{k} {v:.1f} s" for k, v in b["steps_s"].items()), ""]
    if b.get("peak_rss_by_step"):
        L += ["Peak RSS by step (VmRSS sampled every 0.5 s): " + "; ".join(
            f"{k} {v / GIB:.2f} GiB" for k, v in b["peak_rss_by_step"].items()), ""]

    L += ["## Vision encoder (same pixel_values; latency median, patches/s)", "",
          "| image (grid) | patches | ours (the bundle's vision_encoder.onnx) | HF fp32 sdpa | HF bf16 sdpa | ours / HF fp32 |", "|---|---|---|---|---|---|"]
    for name, x in f["images"].items():
        L.append(f"| {name} | {_fmt(x['patches'])} | {_fmt(x['vision_ours_s'], 3)} s, {_fmt(x['vision_ours_pps'], 0)}/s | "
                 f"{_fmt(x['vision_hf_fp32_s'])} s, {_fmt(x['vision_hf_fp32_pps'], 0)}/s | "
                 f"{_fmt(x['vision_hf_bf16_s'])} s, {_fmt(x['vision_hf_bf16_pps'], 0)}/s | {_fmt(x['vision_speedup_vs_hf_fp32'])}x |")
    L += ["", "Timed repeats (median reported) per image: " + "; ".join(
        f"{name}: ours {_n(r, 'vision_ours', 'images', name)}, HF fp32 {_n(r, 'vision_hf_fp32', 'images', name)}, "
        f"HF bf16 {_n(r, 'vision_hf_bf16', 'images', name)}" for name in f["images"]) +
        ". One untimed warm-up before each (none for HF bf16, whose calls take tens of seconds: no bf16 units on this CPU).", ""]

    variants = _get(r, "vision_variants", "variants") or {}
    hf_pps = {name: x["vision_hf_fp32_pps"] for name, x in f["images"].items()}
    if variants:
        L += ["### Vision weight formats (same pixel_values; parity of the [merger | DeepStack] output vs HF fp32)", "",
              "| weights | file | image | latency | patches/s | / HF fp32 | cosine vs HF fp32 | max|diff| / max|ref| |",
              "|---|---|---|---|---|---|---|---|"]
        labels = {"bundle": "the bundle's own (`-p int4` default)", "fp32": "fp32 (`vision_precision=fp32`)",
                  "int8": "int8 MatMulNBits (`vision_precision=int8`)", "int4": "int4 MatMulNBits (`vision_precision=int4`)",
                  "qint8": "dynamic int8, s8 per-channel (`vision_precision=qint8`)",
                  "quint8": "dynamic int8, u8 per-channel (`vision_precision=quint8`)",
                  "fp16": "fp16 stored, fp32 compute (`vision_precision=fp16`)"}
        for variant, entry in variants.items():
            for name, x in entry["images"].items():
                L.append(f"| {labels.get(variant, variant)} | {entry['bytes'] / 1e6:,.0f} MB | {name} | {_fmt(x['median_s'], 3)} s | "
                         f"{_fmt(x['patches_per_s'], 0)} | {_fmt(_ratio(x['patches_per_s'], hf_pps.get(name)))}x | "
                         f"{_fmt(x.get('cosine_vs_hf_fp32'), 6)} | {_fmt(x.get('max_rel_diff_vs_hf_fp32'), 4)} |")
        L += ["", f"Median of {s.repeats} calls after one warm-up, each variant in turn in one process (vision_variants phase).", ""]

    L += ["## Time to first token (image + 32-token question; processor, vision, embeddings, prefill, first token)", "",
          "| image | prompt tokens | ours (og runtime) | HF fp32 generate | ours / HF |", "|---|---|---|---|---|"]
    for name, x in f["images"].items():
        L.append(f"| {name} | {_fmt(x['prompt_tokens'])} | {_fmt(x['ttft_ours_s'])} s | {_fmt(x['ttft_hf_fp32_s'])} s | {_fmt(x['ttft_ratio_ours_over_hf'])} |")
    L += ["", "TTFT split (medians; processor: og's processor call alone; vision: vision_encoder.onnx alone with the "
          "bundle's session settings, same grid; the rest is embeddings + prefill + first token): " + "; ".join(
              f"{name}: processor {_fmt(x['ttft_processor_s'])} s, vision {_fmt(x['vision_ours_s'])} s, rest "
              f"{_fmt((x['ttft_ours_s'] or 0) - (x['ttft_processor_s'] or 0) - (x['vision_ours_s'] or 0))} s"
              for name, x in f["images"].items()) + ".", ""]
    L += ["", "Images are written at HF's target size (builder_qwen3vl.runtime.resize) so both processors use the same grid; "
          "HF input_ids are og's. Timed repeats: " + "; ".join(
              f"{name}: ours {_n(r, 'ttft_og', name)}, HF {_n(r, 'ttft_hf', name)}" for name in f["images"]) +
          " (one warm-up first, none for HF at the large size).", ""]

    L += ["## Decode tokens/s (text-only prompt of the given length, greedy)", "",
          "| context | ours, og runtime | ours model.onnx, ORT loop | og text-only, ORT loop | ours / og text | HF eager fp32 | HF eager bf16 | og runtime / HF fp32 | bound (weights) | bound (weights+KV) | og runtime / bound |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, x in f["contexts"].items():
        L.append(f"| {c} | {_fmt(x['og_runtime_tps'])} | {_fmt(x['ort_loop_ours_tps'])} | {_fmt(x['ort_loop_og_text_tps'])} | "
                 f"{_fmt(x['ours_over_og_text'], 3)} | {_fmt(x['hf_eager_fp32_tps'])} | {_fmt(x['hf_eager_bf16_tps'])} | "
                 f"{_fmt(x['og_runtime_over_hf_fp32'], 1)}x | {_fmt(x['bound_weights_tps'])} | {_fmt(x['bound_weights_kv_tps'])} | "
                 f"{_fmt(x['og_runtime_fraction_of_bound'])} (with KV {_fmt(x['og_runtime_fraction_of_bound_with_kv'])}) |")
    skipped = _get(r, "decode_hf_bf16", "skipped_contexts")
    fb = f["decoder_read_bytes_per_token"] or 0
    db = _get(r, "files", "decoder_bytes") or {}
    L += ["",
          f"- Bandwidth: torch.sum over a 1 GiB fp32 tensor, {s.threads} threads, best of 7 at the start of the run "
          f"({_fmt(_get(r, 'bandwidth', 'GBps'))} GB/s; 1 thread {_fmt(_get(r, 'bandwidth', 'threads_1_GBps'))}) and of 15 at the end "
          f"({_fmt(_get(r, 'profile_decode', 'bandwidth_end', 'GBps'))} GB/s; 1 thread "
          f"{_fmt(_get(r, 'profile_decode', 'bandwidth_end', 'threads_1_GBps'))}); the bound uses the best, {_fmt(f['bandwidth_GBps'])} GB/s.",
          f"- Decoder bytes read per token (model.onnx initializers): {fb / 1e6:,.0f} MB = layers {db.get('matmul_nbits_layers', 0) / 1e6:,.0f} MB "
          f"+ lm_head {db.get('lm_head', 0) / 1e6:,.0f} MB + norms/other {db.get('norms_and_other', 0) / 1e6:,.1f} MB; "
          f"excluded: rotary cos/sin cache {db.get('rotary_cache_not_read', 0) / 1e6:,.0f} MB. KV cache adds "
          f"{(f['kv_bytes_per_context_position'] or 0) / 1e3:,.0f} kB per context position (float32).",
          f"- og runtime and HF: {s.decode_steps} (og) / fewer (HF) decode steps after a prefill, median step; the first og step "
          "(sampling the prefill logits) is not counted. ORT loop: the same IO-bound loop for both model.onnx files "
          f"(shared KV buffer of length context+{s.decode_steps + 2}, random KV contents: decode cost does not depend on them), "
          f"{s.decode_steps} steps x 5 interleaved rounds, median.",
          f"- HF bf16 skipped at contexts {skipped} (prefill in bf16 takes minutes on this CPU; pass --hf-bf16-2048)." if skipped else "- HF bf16 run at every context.",
          "- Prefill (s): " + "; ".join(f"context {c}: ours og {_fmt(x['og_runtime_prefill_s'])}, HF fp32 {_fmt(x['hf_fp32_prefill_s'])}"
                                        for c, x in f["contexts"].items()), ""]

    threads = _get(r, "threads_og", "settings") or {}
    if threads:
        L += ["## intra_op_num_threads through og (decode at context "
              f"{_get(r, 'threads_og', 'context')}, {_get(r, 'threads_og', 'cpu_count')} logical CPUs)", "",
              "| genai_config session_options | decode tok/s | prefill |", "|---|---|---|"]
        for label, x in threads.items():
            L.append(f"| {label} (value {x['intra_op_num_threads']}) | {_fmt(x['tokens_per_s'])} | {_fmt(x['prefill_s'])} s |")
        L += ["", "og 0.18 sets hardware_concurrency()/2 threads when the key is absent and passes a given value, 0 "
              "included, to onnxruntime (0: onnxruntime's default, every physical core).", ""]

    files = _get(r, "files", "bundle_files") or {}
    L += ["## Memory and disk", "",
          f"- Peak RSS of the og process: TTFT run {_fmt((_get(r, 'ttft_og', 'process', 'peak_rss_bytes') or 0) / GIB)} GiB; "
          f"decode run (contexts {s.contexts}) {_fmt((_get(r, 'decode_og', 'process', 'peak_rss_bytes') or 0) / GIB)} GiB. "
          f"HF fp32 decode process {_fmt((_get(r, 'decode_hf_fp32', 'process', 'peak_rss_bytes') or 0) / GIB)} GiB, "
          f"HF bf16 {_fmt((_get(r, 'decode_hf_bf16', 'process', 'peak_rss_bytes') or 0) / GIB)} GiB.", "",
          "| bundle file | bytes |", "|---|---|"]
    for name, size in files.items():
        L.append(f"| {name} | {size:,} |")
    L += [f"| **total** | **{sum(files.values()):,}** ({sum(files.values()) / 1e9:.3f} GB) |", ""]

    prof = r.get("profile_decode")
    if prof:
        L += [f"## Decode profile (onnxruntime profiler, ORT loop, context {max(s.contexts)}, ms per step by op type)", "",
              "| op | ours | og text-only |", "|---|---|---|"]
        ours, og_t = prof["ours"]["ms_per_step_by_op"], prof["og_text"]["ms_per_step_by_op"]
        for op in list(dict.fromkeys(list(ours) + list(og_t)))[:12]:
            L.append(f"| {op} | {_fmt(ours.get(op), 3)} | {_fmt(og_t.get(op), 3)} |")
        L += [f"| **sum** | {_fmt(sum(ours.values()), 2)} | {_fmt(sum(og_t.values()), 2)} |", ""]
    vis = _get(prof, "vision")
    if vis:
        L += [f"## Vision encoder profile (onnxruntime profiler, {vis['image']}, ms per call by op type)", "",
              "| op | ms |", "|---|---|"]
        L += [f"| {op} | {_fmt(ms, 1)} |" for op, ms in list(vis["ms_per_call_by_op"].items())[:10]]
        L += [f"| **sum** | {_fmt(sum(vis['ms_per_call_by_op'].values()), 1)} |", ""]

    L += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if FINDINGS.exists():
        L += [FINDINGS.read_text().strip(), ""]
    return "\n".join(L)


def write_all(s: Settings, docs: Path, command: str, started: datetime.datetime, total_s: float) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    r = collect(s)
    f = derive(s, r)
    m = machine()
    plots = write_plots(s, f, docs)
    (docs / "benchmarks.json").write_text(json.dumps(
        {"shape": s.shape, "command": command, "started": started.isoformat(), "total_s": total_s, "machine": m,
         "settings": {k: getattr(s, k) for k in ("contexts", "decode_steps", "repeats", "slow_repeats", "hf_bf16_2048", "threads")},
         "figures": f, "raw": r}, indent=2, default=str))
    (docs / "benchmarks.md").write_text(markdown(s, r, f, m, command, started, total_s, plots))
