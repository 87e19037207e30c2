"""Peak memory, temporary disk and time of a bundle build, per step, at the real Qwen3-VL shapes (random weights).

    python benchmarks/build_memory.py --shape 2b                       # one build of the 2B shape
    python benchmarks/build_memory.py --shape 32b --layers 4 8         # the 32B shape cut to 4, then 8 text layers
    python benchmarks/build_memory.py --all                            # 2b, 32b x {4, 8}, 30b-a3b x {4, 8}, projections
    python benchmarks/build_memory.py --shape 2b --package-root DIR    # the build of a copy of the package in DIR
                                                                       # (e.g. `git archive HEAD builder_qwen3vl configs`)

Each build is ``python -m builder_qwen3vl -i CKPT -o OUT -p int4 -e cpu`` in a child process with TMPDIR set to a
folder of its own. A sampler thread reads, every 0.2 s, the RSS of the whole process tree (VmRSS of the build
process and every descendant, e.g. the decoder's child process) and the bytes allocated under the output folder
and TMPDIR; the build's log lines ("<step> ...", "<step> done in N s") say which step each sample belongs to.
Temporary disk is the peak of those bytes minus the finished bundle.

With two layer counts of one shape the figures are extrapolated per layer (linear in the layer count, from
the two runs) to the full model: 32B (64 layers), 30B-A3B (48) and 235B-A22B (94, from the 30B-A3B per-layer
figures scaled by the per-layer checkpoint bytes: an estimate, no 235B-shaped layer is built). Results go to
WORK/results-*.json; ``--docs`` writes the section of docs/benchmarks.md. Not part of CI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_docs_section  # noqa: E402
log = logging.getLogger("benchmarks.build_memory")
ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
FULL_LAYERS = {"32b": 64, "30b-a3b": 48, "235b-a22b": 94}
SHAPES = ("2b", "4b", "8b", "32b", "30b-a3b")
DOCS_SECTION = "## Build memory, temporary disk and time per step (`benchmarks/build_memory.py`)"
SAMPLE_SECONDS = 0.2


# ---------------------------------------------------------------- checkpoints


def shape_config(shape: str, layers: int | None) -> dict[str, Any]:
    """The released config.json of ``shape`` (package data), its text layers cut to ``layers``."""
    from builder_qwen3vl.testing.checkpoints import reference_config

    if shape == "30b-a3b":
        from builder_qwen3vl.testing.moe_checkpoints import reference_moe_config

        cfg = reference_moe_config(shape)
    else:
        cfg = reference_config(shape)
    if layers is not None:
        text = cfg["text_config"]
        text["num_hidden_layers"] = layers
        if "mlp_only_layers" in text:
            text["mlp_only_layers"] = [i for i in text["mlp_only_layers"] if i < layers]
    return cfg


def ensure_checkpoint(shape: str, layers: int | None, cache: Path) -> Path:
    """A bf16 random-weight checkpoint of the shape (written once, shard by shard: ~2 GB in memory at a time)."""
    folder = cache / f"qwen3vl-{shape}{f'-L{layers}' if layers else ''}-bf16"
    if shape == "30b-a3b":  # benchmarks/moe_shape.py's checkpoint, shared with it
        folder = cache / f"qwen3vl-30b-a3b-L{layers}-bf16-moeshape"
    if (folder / "config.json").exists() and list(folder.glob("*.safetensors")):
        return folder
    cfg = shape_config(shape, layers)
    log.info("writing checkpoint %s", folder)
    start = time.perf_counter()
    if shape == "30b-a3b":
        from moe_shape import (
            write_checkpoint as write_moe_checkpoint_sharded,  # ~2 GB shards, released layout
        )

        write_moe_checkpoint_sharded(folder, cfg)
    else:
        from builder_qwen3vl.testing.checkpoints import write_checkpoint

        write_checkpoint(folder, cfg, dtype="bf16", shards=max(3, math.ceil(_checkpoint_bytes(cfg) / 2e9)))
    log.info("wrote %s (%.1f GB) in %.0f s", folder, _folder_bytes(folder) / 1e9, time.perf_counter() - start)
    return folder


def _state_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    if cfg.get("model_type") == "qwen3_vl_moe":
        from builder_qwen3vl.testing.moe_checkpoints import _meta_state_shapes
    else:
        from builder_qwen3vl.testing.checkpoints import _meta_state_shapes
    return _meta_state_shapes(cfg)


def _checkpoint_bytes(cfg: dict[str, Any], itemsize: int = 2) -> int:
    return sum(math.prod(shape) for _, shape in _state_shapes(cfg)) * itemsize


# ---------------------------------------------------------------- measuring one build


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_rss(root: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) summed over ``root`` and all its descendants, in bytes."""
    children = _children_map()
    todo, rss, anon = [root], 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, anon


def allocated_bytes(*folders: Path) -> int:
    """Bytes allocated on disk (st_blocks) by the files under ``folders``."""
    total = 0
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass
    return total


class _Steps:
    """The build step running now, from the build's log lines."""

    START = re.compile(r"^(.+) \.\.\.$")
    DONE = re.compile(r"^(.+) done in ([0-9.]+) s$")

    def __init__(self) -> None:
        self.current = "starting"
        self.order: list[str] = []
        self.seconds: dict[str, float] = {}

    def feed(self, line: str) -> None:
        if m := self.DONE.match(line):  # until the next step starts, memory still held counts for this one
            self.seconds[m.group(1)] = float(m.group(2))
        elif (m := self.START.match(line)) and not line.startswith(" "):
            self.current = m.group(1)
            self.order.append(self.current)


def measure_build(ckpt: Path, out: Path, work: Path, package_root: Path | None = None,
                  extra: list[str] | None = None) -> dict[str, Any]:
    """Build ``ckpt`` into ``out``; per step and overall: peak tree RSS, peak temporary disk, seconds."""
    version = code_version(package_root)
    tmp = work / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, TMPDIR=str(tmp))
    if package_root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "builder_qwen3vl", "-i", str(ckpt), "-o", str(out), "-p", "int4", "-e", "cpu", *(extra or [])]
    log.info("$ %s%s", " ".join(cmd), f"  (PYTHONPATH={package_root})" if package_root else "")
    steps = _Steps()
    samples: list[tuple[float, str, int, int, int]] = []  # (t, step, rss, anon, disk)
    stop = threading.Event()
    log_path = work / f"build-{out.name}.log"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(work))

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            rss, anon = tree_rss(proc.pid)
            samples.append((time.perf_counter() - start, steps.current, rss, anon, allocated_bytes(out, tmp)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open(log_path, "w") as log_file:
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            log_file.flush()
            steps.feed(line.rstrip("\n"))
    code = proc.wait()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return {"exit_code": code, "log": str(log_path), "error": "\n".join(tail), "wall_s": wall}
    bundle = allocated_bytes(out)
    per_step: dict[str, dict[str, float]] = {}
    for name in ["starting", *steps.order]:
        mine = [s for s in samples if s[1] == name]
        per_step[name] = {
            "seconds": steps.seconds.get(name, 0.0),
            "peak_rss_gib": max((s[2] for s in mine), default=0) / GIB,
            "peak_anon_gib": max((s[3] for s in mine), default=0) / GIB,
            "peak_disk_gb": max((s[4] for s in mine), default=0) / 1e9,
            "end_disk_gb": (mine[-1][4] if mine else 0) / 1e9,
        }
    peak_disk = max((s[4] for s in samples), default=0)
    return {
        "exit_code": 0, "log": str(log_path), "wall_s": wall, "package_root": str(package_root) if package_root else None,
        "code": version, "load_average_after": os.getloadavg(),
        "peak_rss_gib": max((s[2] for s in samples), default=0) / GIB,
        "peak_anon_gib": max((s[3] for s in samples), default=0) / GIB,
        "peak_disk_gb": peak_disk / 1e9, "bundle_gb": bundle / 1e9, "temporary_disk_gb": max(0, peak_disk - bundle) / 1e9,
        "checkpoint_gb": _folder_bytes(ckpt) / 1e9, "steps": per_step,
        "timeline": [(round(t, 1), s, round(r / GIB, 2), round(d / 1e9, 2)) for t, s, r, _, d in samples[::10]],
    }


def code_version(package_root: Path | None) -> dict[str, Any]:
    """Which code a build ran: the commit, and a hash of each step's sources as they were (the tree may be edited)."""
    import hashlib

    root = (package_root or ROOT) / "builder_qwen3vl"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "builder_qwen3vl"], cwd=ROOT, capture_output=True,
                           text=True, check=False).stdout.split("\n")
    out: dict[str, Any] = {"commit": commit, "tree_edited": package_root is None and any(line.strip() for line in dirty)}
    for part in ("decoder", "embeddings", "vision"):
        digest = hashlib.sha256()
        for path in sorted((root / part).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
        out[f"{part}_sources_sha256"] = digest.hexdigest()[:12]
    return out


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


# ---------------------------------------------------------------- projections


def _layer_bytes(shape: str) -> tuple[int, int]:
    """(bytes of one text layer, bytes of everything else) of the bf16 checkpoint, from HF's meta model."""
    if shape == "235b-a22b":
        from builder_qwen3vl.testing.moe_checkpoints import reference_moe_config

        cfg = reference_moe_config("235b-a22b")
    else:
        cfg = shape_config(shape, None)
    one, two = (_checkpoint_bytes(_with_layers(cfg, n)) for n in (1, 2))
    return two - one, one - (two - one)


def _with_layers(cfg: dict[str, Any], n: int) -> dict[str, Any]:
    import copy

    cfg = copy.deepcopy(cfg)
    cfg["text_config"]["num_hidden_layers"] = n
    cfg["text_config"]["mlp_only_layers"] = [i for i in cfg["text_config"].get("mlp_only_layers", []) if i < n]
    return cfg


DECODER_STEP = "building model.onnx"  # the one step whose work grows with the text layers


def _step_temporary(run: dict[str, Any], name: str) -> float:
    """Disk a step held only while it ran: its peak minus what was left when it ended."""
    step = run["steps"][name]
    if "end_disk_gb" in step:
        end = step["end_disk_gb"]
    else:  # results written before end_disk_gb: the last timeline sample of the step
        samples = [d for _, s, _, d in run.get("timeline", []) if s == name]
        end = samples[-1] if samples else step["peak_disk_gb"]
    return max(0.0, step["peak_disk_gb"] - end)


def project(a: dict[str, Any], la: int, b: dict[str, Any], lb: int, layers: int, scale: float = 1.0,
            base_rss_gib: float | None = None) -> dict[str, Any]:
    """The build at ``layers`` text layers from the runs at ``la`` and ``lb``.

    The decoder step (time, peak RSS, temporary disk) and the bundle are linear in the layer count through the two
    runs, their per-layer slope times ``scale``; the other steps do not depend on the layers (time: the mean of the
    two runs, peak RSS and temporary disk: the larger). With ``base_rss_gib`` (a shape whose layers are ``scale``
    times larger), the decoder's peak is taken as a per-layer working set above that base, scaled by ``scale``.
    """

    def line(x: float, y: float) -> float:
        return y + (y - x) / (lb - la) * scale * (layers - lb)

    steps = {}
    for name in b["steps"]:
        if name not in a["steps"]:
            continue
        sa, sb = a["steps"][name], b["steps"][name]
        ta, tb = _step_temporary(a, name), _step_temporary(b, name)
        if name.startswith(DECODER_STEP):
            peak = line(sa["peak_rss_gib"], sb["peak_rss_gib"])
            if base_rss_gib is not None:
                peak = max(peak, base_rss_gib + (sb["peak_rss_gib"] - base_rss_gib) * scale)
            steps[name] = {"seconds": line(sa["seconds"], sb["seconds"]), "peak_rss_gib": peak,
                           "temporary_gb": max(0.0, line(ta, tb))}
        else:
            steps[name] = {"seconds": (sa["seconds"] + sb["seconds"]) / 2,
                           "peak_rss_gib": max(sa["peak_rss_gib"], sb["peak_rss_gib"]), "temporary_gb": max(ta, tb)}
    overhead = (a["wall_s"] - sum(s["seconds"] for s in a["steps"].values())
                + b["wall_s"] - sum(s["seconds"] for s in b["steps"].values())) / 2  # start-up, moving files
    return {
        "layers": layers, "steps": steps,
        "wall_s": sum(s["seconds"] for s in steps.values()) + overhead,
        "peak_rss_gib": max(s["peak_rss_gib"] for s in steps.values()),
        "bundle_gb": line(a["bundle_gb"], b["bundle_gb"]),
        "temporary_disk_gb": max(s["temporary_gb"] for s in steps.values()),
        "checkpoint_gb": line(a["checkpoint_gb"], b["checkpoint_gb"]),
    }


# ---------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))
    return {"cpus": os.cpu_count(), "memory_gib": mem / GIB, "python": platform.python_version()}


def _fmt_run(label: str, r: dict[str, Any]) -> list[str]:
    if r.get("exit_code"):
        return [f"| {label} | failed: {r.get('error', '').splitlines()[-1] if r.get('error') else ''} |"]
    rows = []
    for name, s in r["steps"].items():
        if not s["seconds"] and not s["peak_rss_gib"]:
            continue
        rows.append(f"| {label} | {name} | {s['seconds']:.1f} | {s['peak_rss_gib']:.2f} | {s['peak_disk_gb']:.2f} |")
    rows.append(f"| {label} | **whole build** | {r['wall_s']:.1f} | **{r['peak_rss_gib']:.2f}** | "
                f"{r['peak_disk_gb']:.2f} (bundle {r['bundle_gb']:.2f}, temporary {r['temporary_disk_gb']:.2f}) |")
    return rows


def _find(results: dict[str, Any], shape: str, layers: int | None, before: bool) -> dict[str, Any] | None:
    for r in results["runs"].values():
        if (r.get("shape"), r.get("layers")) == (shape, layers) and not r.get("exit_code") \
                and str(r.get("series", "")).startswith("before") == before:
            return r
    return None


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, goal, met) rows for the issue's targets that the results cover."""
    rows = []
    l4, l8 = _find(results, "32b", 4, False), _find(results, "32b", 8, False)
    if l8:
        rows.append(("32B shape, 8 text layers: peak RSS", f"{l8['peak_rss_gib']:.2f} GiB", "<= 10 GiB",
                     l8["peak_rss_gib"] <= 10))
    if l4 and l8:
        ratio = l8["peak_rss_gib"] / l4["peak_rss_gib"]
        rows.append(("32B shape: peak RSS 8 layers / 4 layers", f"{ratio:.3f}", "<= 1.15", ratio <= 1.15))
    b2, a2 = _find(results, "2b", None, True), _find(results, "2b", None, False)
    if a2:
        rows.append(("2B shape: peak RSS", f"{a2['peak_rss_gib']:.2f} GiB", "<= 8 GiB", a2["peak_rss_gib"] <= 8))
    if a2 and b2:
        rows.append(("2B shape: build time, before -> after", f"{b2['wall_s']:.0f} s -> {a2['wall_s']:.0f} s",
                     "no worse", a2["wall_s"] <= b2["wall_s"]))
    for name in ("32b", "30b-a3b"):
        p = results.get("projections", {}).get(name, {})
        if p and not p.get("pending"):
            rows.append((f"full {name} (projected): peak RSS", f"{p['peak_rss_gib']:.2f} GiB", "<= 12 GiB",
                         p["peak_rss_gib"] <= 12))
            share = (p["bundle_gb"] + p["temporary_disk_gb"]) / p["bundle_gb"]
            rows.append((f"full {name} (projected): disk during the build / bundle", f"{share:.2f}", "<= 1.25",
                         share <= 1.25))
    return [(t, m, g, "yes" if ok else "**no**") for t, m, g, ok in rows]


def markdown(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    intro = (f"`{command}` ({results['date']}; {m['cpus']} cores, {m['memory_gib']:.1f} GiB RAM, "
             f"{results['free_disk_gb']:.0f} GB free disk at the start). `-p int4 -e cpu`, random bf16 weights of the "
             "released configs, text layers cut to the count shown. RSS: the build process and all its children, "
             f"sampled every {SAMPLE_SECONDS} s; a step's row covers it from its start to the next step's start. Disk: "
             "bytes allocated under the output folder and TMPDIR, bundle included; temporary = peak minus the "
             "finished bundle.")
    lines = [DOCS_SECTION, "", intro, ""]
    if results.get("note"):
        lines += [results["note"], ""]
    rows = targets(results)
    if rows:
        lines += ["| target | measured | goal | met |", "|---|---|---|---|"]
        lines += [f"| {t} | {mm} | {g} | {ok} |" for t, mm, g, ok in rows]
        lines.append("")
    lines += ["| build | step | seconds | peak RSS (GiB) | disk (GB) |", "|---|---|---|---|---|"]
    for label, r in results["runs"].items():
        lines += _fmt_run(label, r)
    lines.append("")
    for label, r in results["runs"].items():
        if r.get("code"):
            c = r["code"]
            which = (f"the package copy in {r['package_root']}" if r.get("package_root") else
                     f"commit {c['commit']}{' + working tree' if c.get('tree_edited') else ''}")
            lines.append(f"- {label}: {which}; sources "
                         f"decoder {c['decoder_sources_sha256']}, embeddings {c['embeddings_sources_sha256']}, "
                         f"vision {c['vision_sources_sha256']}; load average after {r['load_average_after'][0]:.1f}")
    if results.get("projections"):
        how = ("Projections: the decoder step and the bundle linear in the layer count through the two cut builds "
               "of each shape, the other steps as measured (they do not depend on the layers). 235B-A22B, an estimate "
               "from the 30B-A3B builds: its layers hold 4.0x the bytes, so the decoder step's per-layer time, disk "
               "and working set (its peak above a process with torch and onnxruntime loaded) are scaled by that. "
               "Not counted: reading a checkpoint larger than the page cache from disk. This machine: "
               f"{m['memory_gib']:.1f} GiB RAM, {results['free_disk_gb']:.0f} GB free disk. \"fits\": peak RSS within "
               "the RAM and bundle + temporary disk within the free disk (the checkpoint itself not counted).")
        lines += ["", how, "",
                  "| model | layers | checkpoint (GB) | time (min) | peak RSS (GiB) | bundle (GB) | temporary disk (GB) | fits |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, p in results["projections"].items():
            if p.get("pending"):
                lines.append(f"| {name} | {FULL_LAYERS[name]} | | | | | | pending: {p['pending']} |")
                continue
            short = [what for what, ok in (("RAM", p["peak_rss_gib"] <= m["memory_gib"]),
                                           ("disk", p["bundle_gb"] + p["temporary_disk_gb"] <= results["free_disk_gb"]))
                     if not ok]
            fits = "yes" if not short else f"**no** ({', '.join(short)})"
            lines.append(f"| {name} | {p['layers']} | {p['checkpoint_gb']:.0f} | {p['wall_s'] / 60:.0f} | {p['peak_rss_gib']:.1f} | "
                         f"{p['bundle_gb']:.1f} | {p['temporary_disk_gb']:.1f} | {fits} |")
        lines += ["", "Per step (projected peak RSS GiB / minutes):", ""]
        for name, p in results["projections"].items():
            if not p.get("pending"):
                steps = "; ".join(f"{k} {v['peak_rss_gib']:.1f} / {v['seconds'] / 60:.1f}" for k, v in p["steps"].items()
                                  if v["seconds"] or v["peak_rss_gib"])
                lines.append(f"- {name}: {steps}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def run(shape: str, layers: list[int | None], args: argparse.Namespace, results: dict[str, Any]) -> None:
    for n in layers:
        label = f"{shape}{f' ({n} layers)' if n else ''}{f' [{args.label}]' if args.label else ''}"
        try:
            ckpt = args.checkpoint or ensure_checkpoint(shape, n, args.cache)
        except Exception as e:  # noqa: BLE001 - a shape we cannot write yet is reported, not fatal
            results["runs"][label] = {"exit_code": -1, "error": f"checkpoint: {e}"}
            continue
        out = args.work / f"bundle-{shape}{f'-L{n}' if n else ''}"
        res = measure_build(ckpt, out, args.work, args.package_root)
        res.update(shape=shape, layers=n, series=args.label)
        results["runs"][label] = res
        log.info("%s: %s", label, json.dumps({k: v for k, v in res.items() if k not in ("timeline",)}, indent=1))
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
            if args.delete_checkpoints and not args.checkpoint:
                shutil.rmtree(ckpt, ignore_errors=True)
        (args.work / f"results-{args.label or 'run'}.json").write_text(json.dumps(results, indent=1))


def projections(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs = [r for r in results["runs"].values() if not r.get("exit_code") and r.get("layers")
            and not str(r.get("series", "")).startswith("before")]
    for name, source in (("32b", "32b"), ("30b-a3b", "30b-a3b"), ("235b-a22b", "30b-a3b")):
        mine = sorted((r for r in runs if r["shape"] == source), key=lambda r: r["layers"])
        if len(mine) < 2:
            out[name] = {"pending": f"needs two {source} builds"}
            continue
        a, b = mine[0], mine[-1]
        scale, base = 1.0, None
        if name != source:  # a larger layer: per-layer time, bytes and the decoder's working set scaled
            scale = _layer_bytes(name)[0] / _layer_bytes(source)[0]
            # a build process with torch and onnxruntime loaded and no weights: the embeddings step
            base = max(r["steps"][k]["peak_rss_gib"] for r in (a, b) for k in r["steps"] if k.startswith("exporting embeddings"))
        p = project(a, a["layers"], b, b["layers"], FULL_LAYERS[name], scale, base)
        p["scale"] = scale
        if name != source:  # the checkpoint: measured bytes, not a projection
            per_layer, rest = _layer_bytes(name)
            p["checkpoint_gb"] = (rest + per_layer * FULL_LAYERS[name]) / 1e9
        out[name] = p
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES)
    p.add_argument("--layers", type=int, nargs="*", help="text layers to cut the shape to (one build each)")
    p.add_argument("--all", action="store_true", help="2b, 32b x {4, 8}, 30b-a3b x {4, 8}, then the projections")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("BUILDER_QWEN3VL_CACHE", Path.home() / ".cache" / "builder_qwen3vl")))
    p.add_argument("--work", type=Path, default=None, help="bundles, logs, TMPDIR and results (default CACHE/build-memory)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="build this checkpoint folder (of --shape with --layers N) instead of writing one")
    p.add_argument("--package-root", type=Path, default=None, help="build with the builder_qwen3vl found in this folder")
    p.add_argument("--label", default="", help="a name for this series (results-LABEL.json)")
    p.add_argument("--keep", action="store_true", help="keep the bundles")
    p.add_argument("--delete-checkpoints", action="store_true", help="delete each cut checkpoint after its build")
    p.add_argument("--docs", type=Path, default=None, help="write the section into this benchmarks.md")
    p.add_argument("--note", default="", help="a paragraph for the docs section (how the runs were made)")
    p.add_argument("--from-results", type=Path, nargs="*", default=None,
                   help="no builds: merge these results-*.json files, project and report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args.work = (args.work or args.cache / "build-memory").resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    shown = list(argv if argv is not None else sys.argv[1:])
    if "--note" in shown:  # the note is printed as its own paragraph
        del shown[shown.index("--note"):shown.index("--note") + 2]
    command = "python benchmarks/build_memory.py " + " ".join(shown)
    results: dict[str, Any] = {"date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
                               "machine": machine(), "free_disk_gb": shutil.disk_usage(args.work).free / 1e9,
                               "runs": {}, "note": args.note}
    if args.from_results is not None:
        for path in args.from_results:
            for label, r in json.loads(path.read_text())["runs"].items():
                r.setdefault("series", label.rsplit("[", 1)[-1].rstrip("]") if "[" in label else "")
                results["runs"][label] = r
    elif args.all:
        run("2b", [None], args, results)
        run("32b", [4, 8], args, results)
        run("30b-a3b", [4, 8], args, results)
    elif args.shape:
        run(args.shape, args.layers or [None], args, results)
    else:
        p.error("give --shape, --all or --from-results")
    results["projections"] = projections(results)
    (args.work / f"results-{args.label or 'run'}.json").write_text(json.dumps(results, indent=1))
    text = markdown(results, command)
    print(text)
    if args.docs:
        write_docs_section(DOCS_SECTION, text, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
