"""The Qwen3-VL-30B-A3B shape (MoE) with random weights, its text layers cut to a few: build, bundle, decode, TTFT.

    python benchmarks/moe_shape.py --layers 4 8                 # checkpoints, builds, measurements, report
    python benchmarks/moe_shape.py --layers 4 8 --only decode ttft profile --resume
    python benchmarks/moe_shape.py --layers 4 8 --report-only   # the markdown section from the saved results
    python benchmarks/moe_shape.py --layers 4 --package-root DIR  # build with a copy of the package in DIR

The config is the released 30B-A3B one (builder_qwen3vl/testing/data/reference/qwen3-vl-30b-a3b-instruct.config.json:
text hidden 2048, 32 heads / 4 KV heads, head_dim 128, 128 experts, top 8, moe_intermediate_size 768, untied
table; vision depth 27, hidden 1152, out 2048, DeepStack [8, 16, 24]) with ``num_hidden_layers`` = N. The
checkpoint is bf16, the experts in the released layout, the tensors of testing.moe_checkpoints.moe_tensors
(same names, seeds and values), written a ~2 GB shard at a time.

Per layer count, each phase in a child process (WORK/L<N>/results/<phase>.json):

- ``build``: ``python -m builder_qwen3vl -i CKPT -o OUT -p int4 -e cpu``; wall time, the build's step times
  (its log), peak RSS of the whole process tree (VmRSS of the build and its descendants, every 0.25 s) and the
  largest single process (getrusage).
- ``files``: bundle bytes per file and the decoder's initializers by kind (experts, attention, router, norms,
  lm_head, rotary caches), and from those the bytes one decode step reads (attention + router + norms + lm_head +
  top-8/128 of the experts).
- ``decode``: og as a user runs it (runtime/og_run.py: og.Model with the bundle's genai_config, og.Generator,
  greedy) on a 256-token text prompt, then 32 steps; median step, 3 rounds.
- ``ttft``: a 448x448 image question (32-token question) through og's processor, vision, embeddings, prefill
  and the first token; median of ``--repeats`` calls after a warm-up; vision_encoder.onnx alone on the same grid.
- ``profile``: onnxruntime's profiler on model.onnx in benchmarks/measure_onnx.py's og-like decode loop at
  context 256: ms per step by op type.
- ``qmoe_acc4``: decode and profile again with the bundle's QMoE nodes given ``accuracy_level=4`` (a copy of
  model.onnx, the rest of the bundle linked): the int8-activation expert kernel, as og's dense MatMulNBits use.

Per-layer figures come from the difference of two layer counts and are extrapolated linearly to 48 layers.
Not part of CI.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

log = logging.getLogger("benchmarks.moe_shape")
ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
FULL_LAYERS = 48
PHASES = ("checkpoint", "build", "files", "bandwidth", "decode", "ttft", "hf", "profile", "qmoe_acc4")
CONTEXT = 256
DECODE_STEPS = 32


# ---------------------------------------------------------------- checkpoint


def shape_config(layers: int) -> dict[str, Any]:
    from builder_qwen3vl.testing.moe_checkpoints import reference_moe_config

    cfg = reference_moe_config("30b-a3b")
    text = cfg["text_config"]
    text["num_hidden_layers"] = layers
    text["mlp_only_layers"] = [i for i in text.get("mlp_only_layers") or [] if i < layers]
    return cfg


def write_checkpoint(folder: Path, cfg: dict[str, Any], shard_bytes: float = 2e9) -> None:
    """testing.moe_checkpoints.write_moe_checkpoint(folder, cfg, expert_layout="released", dtype="bf16")'s tensors,
    in shards of about ``shard_bytes`` (its one-file writer holds the whole checkpoint, twice, in memory)."""
    import torch
    from safetensors.torch import save_file

    from builder_qwen3vl.testing.checkpoints import reference_json
    from builder_qwen3vl.testing.moe_checkpoints import _meta_state_shapes, moe_tensor
    from builder_qwen3vl.shipped.tokenizer import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(cfg)
    cfg["text_config"]["dtype"] = "bfloat16"
    shapes = _meta_state_shapes(cfg)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        if size and size + math.prod(shape) * 2 > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += math.prod(shape) * 2
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    for file, entries in zip(files, shards):
        tensors = {}
        for name, shape in entries:
            tensors[name] = moe_tensor(name, shape, "released", 0, torch.bfloat16)
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        log.info("wrote %s (%d tensors)", file, len(tensors))
        del tensors
    total = sum(math.prod(shape) * 2 for _, shape in shapes)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    vision = cfg["vision_config"]
    sizes = {"patch_size": vision.get("patch_size", 16), "temporal_patch_size": vision.get("temporal_patch_size", 2),
             "merge_size": vision.get("spatial_merge_size", 2)}
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        (folder / name).write_text(json.dumps({**reference_json(f"qwen3-vl-{name}"), **sizes}, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(reference_json("qwen3-vl-instruct.generation_config.json"), indent=2))
    write_tokenizer(folder)


def checkpoint_params(cfg: dict[str, Any]) -> dict[str, int]:
    from builder_qwen3vl.testing.moe_checkpoints import _meta_state_shapes

    out = {"experts": 0, "text_other": 0, "vision": 0}
    for name, shape in _meta_state_shapes(cfg):
        kind = "experts" if ".mlp.experts." in name else "vision" if ".visual." in name or name.startswith("visual.") else "text_other"
        out[kind] += math.prod(shape)
    return out


# ---------------------------------------------------------------- process-tree memory


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(b")") + 2:].split()[1]), []).append(int(entry.name))
    return children


def tree_rss(root: int) -> int:
    """VmRSS of ``root`` and all its descendants, bytes."""
    children, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_tree(cmd: list[str], log_path: Path, env: dict[str, str] | None = None, period: float = 0.25) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, peak RSS of the process tree (sampled), largest process (getrusage), exit code."""
    log.info("$ %s", " ".join(cmd))
    samples: list[tuple[float, int, str]] = []
    stop = threading.Event()
    busy_before = busy_cpu_seconds()
    with open(log_path, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env)

        def sample() -> None:
            while not stop.wait(period):
                samples.append((time.perf_counter() - start, tree_rss(proc.pid), _current_step(log_path)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        busy = busy_cpu_seconds() - busy_before
        stop.set()
        sampler.join()
    own = usage.ru_utime + usage.ru_stime
    by_step: dict[str, int] = {}
    for _, rss, step in samples:
        by_step[step or "-"] = max(rss, by_step.get(step or "-", 0))
    return {"command": " ".join(cmd), "wall_s": wall, "exit_code": os.waitstatus_to_exitcode(status), "log": str(log_path),
            "peak_tree_rss_bytes": max((s[1] for s in samples), default=0),
            "max_process_rss_bytes": usage.ru_maxrss * 1024, "peak_tree_rss_by_step": by_step,
            "cpu_s": own, "foreign_cpu_share": max(0.0, busy - own) / (wall * (os.cpu_count() or 1)),
            "timeline": [(round(t, 1), round(r / GIB, 2), s) for t, r, s in samples[::8]]}


def busy_cpu_seconds() -> float:
    """Non-idle CPU seconds of the whole machine so far (/proc/stat), to tell how much of a measurement's
    wall time other processes had the CPUs: (busy - the measured process tree's own CPU) / (wall x CPUs)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _current_step(log_path: Path) -> str:
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.endswith(" ...") and not ln.startswith(" ")]
    except OSError:
        return ""
    return lines[-1][:-4] if lines else ""


# ---------------------------------------------------------------- phases


class Run:
    def __init__(self, work: Path, layers: int, cache: Path):
        self.layers = layers
        self.work = work / f"L{layers}"
        self.checkpoint = cache / f"qwen3vl-30b-a3b-L{layers}-bf16-moeshape"
        self.bundle = self.work / "bundle-int4"
        self.results = self.work / "results"

    def read(self, phase: str) -> dict[str, Any] | None:
        path = self.results / f"{phase}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write(self, phase: str, data: dict[str, Any]) -> None:
        self.results.mkdir(parents=True, exist_ok=True)
        (self.results / f"{phase}.json").write_text(json.dumps(data, indent=2))

    def settings(self, repeats: int = 5):
        from common import Settings

        return Settings(shape=f"30b-a3b-L{self.layers}", checkpoint=str(self.checkpoint), work=str(self.work),
                        contexts=[CONTEXT], decode_steps=DECODE_STEPS, repeats=repeats)


def phase_checkpoint(run: Run) -> dict[str, Any]:
    cfg = shape_config(run.layers)
    if not (run.checkpoint / "model.safetensors.index.json").exists():
        start = time.perf_counter()
        write_checkpoint(run.checkpoint, cfg)
        written = time.perf_counter() - start
    else:
        written = None
    files = sorted(run.checkpoint.glob("*.safetensors"))
    return {"folder": str(run.checkpoint), "write_s": written, "bytes": sum(f.stat().st_size for f in files),
            "params": checkpoint_params(cfg)}


def phase_build(run: Run, package_root: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if package_root:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "builder_qwen3vl", "-i", str(run.checkpoint), "-o", str(run.bundle), "-p", "int4", "-e", "cpu",
           "--overwrite"]
    run.work.mkdir(parents=True, exist_ok=True)
    res = run_tree(cmd, run.work / "build.log", env)
    if res["exit_code"] != 0:
        raise RuntimeError(f"build failed (exit {res['exit_code']}); see {res['log']}")
    text = Path(res["log"]).read_text(errors="replace")
    res["steps_s"] = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S.+?) done in ([0-9.]+) s$", text, re.M)}
    res["package_root"] = package_root
    res["code"] = code_description(package_root)
    return res


def code_description(package_root: str | None) -> dict[str, Any]:
    """Which builder_qwen3vl the build ran: the commit and whether the working tree's package differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=str(ROOT), capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    snapshot = Path(package_root, "SNAPSHOT") if package_root else None
    if snapshot and snapshot.exists():  # written when the working tree's package was copied there
        return {"head": head, "package_root": package_root, "snapshot": snapshot.read_text().splitlines()}
    dirty = git("status", "--porcelain", "--", "builder_qwen3vl")
    return {"head": head, "package_root": package_root,
            "working_tree_changes": dirty.splitlines() if not package_root else None}


KINDS = ("experts", "router", "attention", "norms_other", "lm_head", "rotary_cache")


def initializer_kind(name: str) -> str:
    if ".moe.experts." in name:
        return "experts"
    if "cos_cache" in name or "sin_cache" in name:
        return "rotary_cache"
    if "lm_head" in name:
        return "lm_head"
    if "/moe/router" in name or ".moe.gate" in name or "mlp.gate." in name or "router" in name:
        return "router"
    if any(p in name for p in ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "attn")) and not name.endswith("norm.weight"):
        return "attention"
    return "norms_other"


def phase_files(run: Run) -> dict[str, Any]:
    import onnx
    from measure_machine import initializer_size

    files = {p.name: p.stat().st_size for p in sorted(run.bundle.iterdir()) if p.is_file()}
    model = onnx.load(str(run.bundle / "model.onnx"), load_external_data=False)
    kinds = dict.fromkeys(KINDS, 0)
    names: dict[str, list[str]] = {k: [] for k in KINDS}
    for init in model.graph.initializer:
        size = initializer_size(init)
        kind = initializer_kind(init.name)
        kinds[kind] += size
        if len(names[kind]) < 6:
            names[kind].append(init.name)
    qmoe = [n for n in model.graph.node if n.op_type in ("QMoE", "MoE")]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in qmoe[0].attribute} if qmoe else {}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    mnb = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    mnb_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in mnb[0].attribute} if mnb else {}
    top_k, experts = int(attrs.get("k", 8)), 128
    read = kinds["attention"] + kinds["router"] + kinds["norms_other"] + kinds["lm_head"] + kinds["experts"] * top_k / experts
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"files": files, "total_bytes": sum(files.values()), "decoder_initializers": kinds, "examples": names,
            "decode_read_bytes": read, "qmoe_nodes": len(qmoe), "qmoe_attributes": attrs,
            "matmulnbits_attributes": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in mnb_attrs.items()},
            "op_counts": ops}


def phase_bandwidth() -> dict[str, Any]:
    from measure_machine import bandwidth

    return bandwidth(2, repeats=15)


def og_decode(bundle: Path, rounds: int = 3) -> dict[str, Any]:
    from common import text_prompt_ids
    from measure_onnx import _timed_steps

    from builder_qwen3vl.runtime.og_run import load_model

    model = load_model(bundle)
    out = []
    for r in range(rounds):
        prefill_s, steps = _timed_steps(model, text_prompt_ids(CONTEXT, seed=r), DECODE_STEPS)
        out.append({"prefill_s": prefill_s, "step_median_s": statistics.median(steps), "steps": len(steps)})
    med = statistics.median(r["step_median_s"] for r in out)
    return {"context": CONTEXT, "rounds": out, "step_median_s": med, "tokens_per_s": 1.0 / med,
            "prefill_median_s": statistics.median(r["prefill_s"] for r in out)}


def phase_decode(run: Run) -> dict[str, Any]:
    return og_decode(run.bundle)


def _og_ttft(run: Run, repeats: int) -> dict[str, Any]:
    """A 448x448 image question through og as a user runs it (as measure_onnx.ttft_og, the first benchmark image)."""
    import numpy as np
    import onnxruntime_genai as og
    from common import benchmark_images, question_text, timed

    from builder_qwen3vl.runtime.og_run import chat_prompt, greedy, load_model

    image = benchmark_images(run.settings(repeats))[0]
    model = load_model(run.bundle)
    tokenizer = og.Tokenizer(model)
    question = question_text(lambda t: list(tokenizer.encode(t)))
    prompt = chat_prompt(tokenizer, question, num_images=1)
    processor = model.create_multimodal_processor()

    def once() -> None:
        inputs = processor(prompt, images=og.Images.open(image["path"]))
        next(greedy(model, inputs, max_new_tokens=1))

    inputs = processor(prompt, images=og.Images.open(image["path"]))
    grid = inputs["image_grid_thw"].as_numpy().astype(np.int64)
    # the prompt HF answers in the hf phase (measure_hf.ttft_hf reads it: same tokens, same grid)
    np.savez(run.work / f"ttft_inputs_{image['name']}.npz", input_ids=inputs["input_ids"].as_numpy().astype(np.int64),
             image_grid_thw=grid)
    return {"image": image["name"], "grid_thw": grid[0].tolist(), "prompt_tokens": int(inputs["input_ids"].as_numpy().shape[-1]),
            "question": question, "ttft": timed(once, repeats, warmup=1),
            "processor_s": timed(lambda: processor(prompt, images=og.Images.open(image["path"])), repeats, warmup=1)["median_s"]}


def phase_ttft(run: Run, repeats: int) -> dict[str, Any]:
    """The og first-token time, then vision_encoder.onnx alone on the same grid (og's model freed first)."""
    import numpy as np
    from common import random_pixel_values, timed
    from measure_onnx import OG_VISION_OUTPUTS, _session, bundle_threads

    out = _og_ttft(run, repeats)
    grid = np.array([out["grid_thw"]], dtype=np.int64)
    sess = _session(run.bundle / "vision_encoder.onnx", bundle_threads(run.settings(repeats), "vision"))
    pixels = random_pixel_values(tuple(out["grid_thw"]), int(sess.get_inputs()[0].shape[1]))
    out["vision_s"] = timed(lambda: sess.run(OG_VISION_OUTPUTS, {"pixel_values": pixels, "image_grid_thw": grid}), repeats,
                            warmup=1)["median_s"]
    return out


def phase_hf(run: Run, repeats: int) -> dict[str, Any]:
    """HF's Qwen3VLMoeForConditionalGeneration on the same checkpoint, in bf16 (fp32 of the 8-layer cut does not
    fit 24 GiB): eager decode at context 256 and the ttft phase's image question (its saved og input_ids)."""
    from measure_hf import decode_hf, ttft_hf

    s = run.settings(repeats)
    s.slow_repeats = repeats
    return {"decode": decode_hf(s, "bf16"), "ttft": ttft_hf(s, "bf16", images=1)}


def profile(model_path: Path, work: Path, label: str, steps: int = 16) -> dict[str, Any]:
    from measure_onnx import PlainDecoder

    dec = PlainDecoder(model_path, 2, CONTEXT + steps + 2, profile=str(work / f"profile_{label}"))
    step_s = dec.time_steps(CONTEXT, steps)
    trace = dec.sess.end_profiling()
    events = json.loads(Path(trace).read_text())
    Path(trace).unlink()  # large; the summary is kept
    # the first run is the warm-up (onnxruntime packs QMoE's and MatMulNBits' weights on it): count the timed ones
    runs = sorted((ev["ts"], ev["ts"] + ev["dur"]) for ev in events if ev.get("cat") == "Session" and ev.get("name") == "model_run")
    timed_runs = runs[1:]
    by_op: dict[str, float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            if any(start <= ev["ts"] <= end for start, end in timed_runs):
                op = ev.get("args", {}).get("op_name", "?")
                by_op[op] = by_op.get(op, 0.0) + ev["dur"] / 1e3
    return {"step_median_s_profiled": step_s, "runs_counted": len(timed_runs),
            "warmup_run_ms": (runs[0][1] - runs[0][0]) / 1e3 if runs else None,
            "ms_per_step_by_op": {k: v / len(timed_runs) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def phase_profile(run: Run) -> dict[str, Any]:
    return profile(run.bundle / "model.onnx", run.work, "bundle")


def qmoe_variant(run: Run, accuracy_level: int = 4) -> Path:
    """A copy of the bundle's model.onnx whose QMoE nodes have ``accuracy_level``; the other files linked."""
    import onnx

    folder = run.work / f"bundle-qmoe-acc{accuracy_level}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for f in run.bundle.iterdir():
        if f.name != "model.onnx":  # hard links: og refuses external data that resolves outside the model's folder
            os.link(f, folder / f.name)
    model = onnx.load(str(run.bundle / "model.onnx"), load_external_data=False)
    changed = 0
    for node in model.graph.node:
        if node.op_type == "QMoE":
            for a in list(node.attribute):
                if a.name == "accuracy_level":
                    node.attribute.remove(a)
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", accuracy_level))
            changed += 1
    if not changed:
        raise RuntimeError("no QMoE node in the bundle's model.onnx")
    onnx.save(model, str(folder / "model.onnx"))  # external data stays model.onnx.data (linked)
    return folder


def phase_qmoe_acc4(run: Run) -> dict[str, Any]:
    folder = qmoe_variant(run)
    out = {"bundle": str(folder), "decode": og_decode(folder), "profile": profile(folder / "model.onnx", run.work, "acc4")}
    return out


def child(phase: str, run: Run, args: argparse.Namespace) -> dict[str, Any]:
    if phase == "files":
        return phase_files(run)
    if phase == "bandwidth":
        return phase_bandwidth()
    if phase == "decode":
        return phase_decode(run)
    if phase == "ttft":
        return phase_ttft(run, args.repeats)
    if phase == "hf":
        return phase_hf(run, args.repeats)
    if phase == "profile":
        return phase_profile(run)
    if phase == "qmoe_acc4":
        return phase_qmoe_acc4(run)
    raise ValueError(phase)


def run_phase(phase: str, run: Run, args: argparse.Namespace) -> None:
    if args.resume and run.read(phase) is not None:
        log.info("L%d %s: kept (--resume)", run.layers, phase)
        return
    start = time.perf_counter()
    load = os.getloadavg()
    avail = available_gib()
    if phase == "checkpoint":
        data = phase_checkpoint(run)
    elif phase == "build":
        data = phase_build(run, args.package_root)
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--layers", str(run.layers),
               "--work", str(args.work), "--cache", str(args.cache), "--repeats", str(args.repeats)]
        attempts = []
        for attempt in range(args.attempts):
            if attempt:
                wait_for(lambda: os.getloadavg()[0] < args.max_load, f"load average < {args.max_load}")
            res = run_tree(cmd, run.work / f"{phase}.log")
            if res["exit_code"] != 0:
                log.error("L%d %s failed; see %s", run.layers, phase, res["log"])
                return
            data = run.read(phase) or {}
            data["process"] = {k: res[k] for k in ("wall_s", "peak_tree_rss_bytes", "max_process_rss_bytes", "cpu_s",
                                                   "foreign_cpu_share")}
            attempts.append(data)
            log.info("L%d %s: other processes had %.0f %% of the CPUs", run.layers, phase, 100 * res["foreign_cpu_share"])
            if res["foreign_cpu_share"] <= args.max_foreign or phase == "files":
                break
        # the attempt other processes disturbed least; the others' shares kept beside it
        data = min(attempts, key=lambda d: d["process"]["foreign_cpu_share"])
        data["attempts_foreign_cpu_share"] = [d["process"]["foreign_cpu_share"] for d in attempts]
    data["load_before"] = load
    data["available_gib_before"] = avail
    data["load_after"] = os.getloadavg()
    data["started"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    data["phase_wall_s"] = time.perf_counter() - start
    run.write(phase, data)
    log.info("L%d %s done in %.1f s (load before %.2f)", run.layers, phase, data["phase_wall_s"], load[0])


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


# ---------------------------------------------------------------- report


def per_layer(a: float, b: float, la: int, lb: int) -> tuple[float, float]:
    """(per layer, at FULL_LAYERS) from values at la and lb layers, linear in the layer count."""
    slope = (b - a) / (lb - la)
    return slope, a + slope * (FULL_LAYERS - la)


def report(work: Path, cache: Path, layer_counts: list[int]) -> str:
    runs = {n: Run(work, n, cache) for n in layer_counts}
    res = {n: {p: r.read(p) for p in PHASES} for n, r in runs.items()}
    lines = ["| | " + " | ".join(f"{n} layers" for n in layer_counts) + " |", "|---" * (len(layer_counts) + 1) + "|"]

    def row(label: str, fn) -> None:
        vals = []
        for n in layer_counts:
            try:
                vals.append(fn(res[n]))
            except (TypeError, KeyError):
                vals.append("—")
        lines.append(f"| {label} | " + " | ".join(vals) + " |")

    row("checkpoint (bf16)", lambda r: f"{r['checkpoint']['bytes'] / 1e9:.2f} GB")
    row("build wall time", lambda r: f"{r['build']['wall_s']:.0f} s")
    row("build peak RSS, process tree", lambda r: f"{r['build']['peak_tree_rss_bytes'] / GIB:.2f} GiB")
    row("build largest process (getrusage)", lambda r: f"{r['build']['max_process_rss_bytes'] / GIB:.2f} GiB")
    row("bundle", lambda r: f"{r['files']['total_bytes'] / 1e9:.3f} GB")
    row("decode tok/s, og, context 256", lambda r: f"{r['decode']['tokens_per_s']:.2f}")
    row("decode step (ms)", lambda r: f"{r['decode']['step_median_s'] * 1e3:.1f}")
    row("TTFT 448x448 + 32-token question", lambda r: f"{r['ttft']['ttft']['median_s']:.2f} s")
    row("of which vision_encoder.onnx alone", lambda r: f"{r['ttft']['vision_s']:.2f} s")
    row("HF bf16 eager decode tok/s, context 256", lambda r: f"{r['hf']['decode']['256']['tokens_per_s']:.2f}")
    row("og / HF bf16 decode", lambda r: f"{r['decode']['tokens_per_s'] / r['hf']['decode']['256']['tokens_per_s']:.2f}x")
    row("HF bf16 sdpa TTFT, same prompt", lambda r: f"{next(v for k, v in r['hf']['ttft'].items() if isinstance(v, dict))['median_s']:.2f} s")
    row("og / HF bf16 TTFT", lambda r: f"{r['ttft']['ttft']['median_s'] / next(v for k, v in r['hf']['ttft'].items() if isinstance(v, dict))['median_s']:.2f}x")
    row("decode tok/s with QMoE accuracy_level=4", lambda r: f"{r['qmoe_acc4']['decode']['tokens_per_s']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("BUILDER_QWEN3VL_CACHE", Path.home() / ".cache" / "builder_qwen3vl")))
    p.add_argument("--work", type=Path, default=None, help="default CACHE/bench-30b-a3b")
    p.add_argument("--only", nargs="+", choices=PHASES)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--package-root", default=None, help="PYTHONPATH for the build (a copy of the package)")
    p.add_argument("--min-available-gib", type=float, default=16.0, help="wait before a build until this much is free")
    p.add_argument("--max-load", type=float, default=1.0, help="wait before a timed phase until the 1-min load is below")
    p.add_argument("--max-build-load", type=float, default=2.0, help="the same before a build")
    p.add_argument("--attempts", type=int, default=3, help="tries of a timed phase disturbed by other processes")
    p.add_argument("--max-foreign", type=float, default=0.05,
                   help="retry a timed phase when other processes had more than this share of the CPUs during it")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args.work = args.work or args.cache / "bench-30b-a3b"
    if args.child:
        run = Run(args.work, args.layers[0], args.cache)
        run.write(args.child, child(args.child, run, args))
        return 0
    if args.report_only:
        print(report(args.work, args.cache, args.layers))
        return 0
    (args.work).mkdir(parents=True, exist_ok=True)
    for n in args.layers:
        run = Run(args.work, n, args.cache)
        for phase in PHASES:
            if args.only and phase not in args.only:
                continue
            if phase == "build":
                wait_for(lambda: available_gib() >= args.min_available_gib, f"{args.min_available_gib} GiB available")
                wait_for(lambda: os.getloadavg()[0] < args.max_build_load, f"load average < {args.max_build_load}")
            if phase in ("decode", "ttft", "hf", "profile", "qmoe_acc4", "bandwidth"):
                wait_for(lambda: os.getloadavg()[0] < args.max_load, f"load average < {args.max_load}")
            run_phase(phase, run, args)
    print(report(args.work, args.cache, args.layers))
    return 0


def wait_for(ok, what: str, period: float = 60.0) -> None:
    while not ok():
        log.info("waiting for %s (load %.2f, available %.1f GiB)", what, os.getloadavg()[0], available_gib())
        time.sleep(period)


if __name__ == "__main__":
    sys.exit(main())
