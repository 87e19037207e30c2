"""Benchmarks at the real Qwen3-VL shapes: our int4 bundle vs HF transformers (and vs the og builder's
text-only decoder), measured side by side in one run on this machine.

    python benchmarks/run.py                 # 2B: ~30-40 min on 2 cores, writes docs/benchmarks.*
    python benchmarks/run.py --shape 4b      # the 4B config
    python benchmarks/run.py --shape tiny    # minutes; a tiny random model, for developing this script

Needs the `bench` extra for the plots (pip install -e ".[test,bench]").

Each phase runs in its own child process (so its peak RSS is its own and memory is returned
between the heavy HF parts) and writes WORK/results/PHASE.json; the parent writes the report.
Not part of CI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Settings, read_result, write_result  # noqa: E402

log = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parents[1]

# (phase, runs in a child, needs) in run order; heavy HF phases one at a time.
PHASES = (
    "build", "build_og_text", "bandwidth", "files", "vision_ours", "vision_hf_fp32", "vision_hf_bf16", "vision_variants",
    "ttft_og", "ttft_hf", "decode_ort", "decode_og", "threads_og", "decode_hf_fp32", "decode_hf_bf16", "profile_decode",
)


def cache_root() -> Path:
    return Path(os.environ.get("BUILDER_QWEN3VL_CACHE", Path.home() / ".cache" / "builder_qwen3vl"))


def ensure_checkpoint(shape: str, cache: Path) -> Path:
    """The random-weight bf16 checkpoint of the real config (tiny: a small fp32 one)."""
    from builder_qwen3vl.testing.checkpoints import reference_config, tiny_config, write_checkpoint

    if shape == "tiny":
        folder, cfg, dtype, shards = cache / "qwen3vl-tiny-bench", tiny_config(vision_depth=4), "fp32", 1
    else:
        folder, cfg, dtype, shards = cache / f"qwen3vl-{shape}-bf16", reference_config(shape), "bf16", 3
    if not (folder / "config.json").exists() or not list(folder.glob("*.safetensors")):
        log.info("writing checkpoint %s", folder)
        write_checkpoint(folder, cfg, dtype=dtype, shards=shards)
    return folder


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _current_step(log_path: Path) -> str:
    """The last '<step> ...' line of a builder log (its running step)."""
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.endswith(" ...")]
    except OSError:
        return ""
    return lines[-1][:-4] if lines else ""


def _sample_rss(pid: int, log_path: Path, samples: list, stop: threading.Event, period: float = 0.5) -> None:
    start = time.perf_counter()
    while not stop.wait(period):
        rss = _rss_bytes(pid)
        if rss is not None:
            samples.append((round(time.perf_counter() - start, 1), rss, _current_step(log_path)))


def run_child(cmd: list[str], log_path: Path) -> dict[str, Any]:
    """Run ``cmd``; return wall seconds, peak RSS (getrusage of the child), an RSS timeline
    (VmRSS every 0.5 s, with the build step running at the time) and the exit code."""
    log.info("$ %s", " ".join(cmd))
    samples: list = []
    stop = threading.Event()
    with open(log_path, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT))
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, log_path, samples, stop), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_by_step: dict[str, int] = {}
    for _, rss, stepname in samples:
        peak_by_step[stepname or "-"] = max(rss, peak_by_step.get(stepname or "-", 0))
    return {"command": " ".join(cmd), "wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "exit_code": proc.returncode,
            "log": str(log_path), "peak_rss_by_step": peak_by_step, "rss_timeline": samples[::4]}


def build_steps(log_text: str) -> dict[str, float]:
    """'<step> done in N s' lines written by builder_qwen3vl.pipeline.step."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(.+?) done in ([0-9.]+) s$", log_text, re.M)}


def phase_build(s: Settings) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "builder_qwen3vl", "-i", s.checkpoint, "-o", str(s.bundle), "-p", "int4", "-e", "cpu", "--overwrite"]
    if s.extra_options:
        cmd += ["--extra_options", s.extra_options]
    res = run_child(cmd, Path(s.work) / "build.log")
    if res["exit_code"] != 0:
        raise RuntimeError(f"bundle build failed (exit {res['exit_code']}); see {res['log']}")
    res["steps_s"] = build_steps(Path(res["log"]).read_text())
    return res


def phase_build_og_text(s: Settings) -> dict[str, Any]:
    # og's CLI --help crashes in 0.18, but a normal invocation works.
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", s.checkpoint, "-o", str(s.og_text),
           "-p", "int4", "-e", "cpu", "-c", str(Path(s.work) / "og-cache"), "--extra_options", "exclude_embeds=true"]
    res = run_child(cmd, Path(s.work) / "build_og_text.log")
    if res["exit_code"] != 0:
        raise RuntimeError(f"og text-only build failed (exit {res['exit_code']}); see {res['log']}")
    return res


def phase_files(s: Settings) -> dict[str, Any]:
    from measure_machine import disk_sizes, initializer_bytes

    out = {"bundle_files": disk_sizes(s.bundle), "decoder_bytes": initializer_bytes(s.bundle / "model.onnx")}
    if s.og_text.exists():  # the build_og_text phase is optional (--only without it)
        out.update(og_text_files=disk_sizes(s.og_text), og_text_decoder_bytes=initializer_bytes(s.og_text / "model.onnx"))
    return out


def child_phase(name: str, s: Settings) -> dict[str, Any]:
    """The body of a phase that runs inside a child process."""
    import measure_hf
    import measure_machine
    import measure_onnx

    if name == "bandwidth":
        return measure_machine.bandwidth(s.threads)
    if name == "vision_ours":
        return measure_onnx.vision_ours(s)
    if name == "vision_variants":
        return measure_onnx.vision_variants(s)
    if name.startswith("vision_hf_"):
        return measure_hf.vision_hf(s, name.rsplit("_", 1)[1])
    if name == "ttft_og":
        return measure_onnx.ttft_og(s)
    if name == "ttft_hf":
        return measure_hf.ttft_hf(s)
    if name == "decode_ort":
        return measure_onnx.decode_ort(s)
    if name == "decode_og":
        return measure_onnx.decode_og(s)
    if name == "threads_og":
        return measure_onnx.threads_og(s)
    if name.startswith("decode_hf_"):
        return measure_hf.decode_hf(s, name.rsplit("_", 1)[1])
    if name == "profile_decode":
        out = measure_onnx.profile_decode(s, max(s.contexts))
        out["vision"] = measure_onnx.profile_vision(s)
        # Other processes share the memory bus: measure again at the end, the report takes the best.
        out["bandwidth_end"] = measure_machine.bandwidth(s.threads, repeats=15)
        return out
    raise ValueError(f"unknown phase {name}")


def run_phase(name: str, s: Settings, resume: bool) -> None:
    if resume and read_result(s, name) is not None:
        log.info("phase %s: kept from an earlier run (--resume)", name)
        return
    start = time.perf_counter()
    if name == "build":
        data = phase_build(s)
    elif name == "build_og_text":
        data = phase_build_og_text(s)
    elif name == "files":
        data = phase_files(s)
    else:
        proc = run_child([sys.executable, str(Path(__file__).resolve()), "--phase", name, "--work", s.work],
                         Path(s.work) / f"{name}.log")
        if proc["exit_code"] != 0:
            log.error("phase %s failed (exit %d); see %s", name, proc["exit_code"], proc["log"])
            return
        data = read_result(s, name) or {}
        data["process"] = proc
    data.setdefault("phase_wall_s", time.perf_counter() - start)
    write_result(s, name, data)
    log.info("phase %s done in %.1f s", name, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="2b", choices=("tiny", "2b", "4b"))
    p.add_argument("--cache", default=None, help="checkpoint cache folder (default $BUILDER_QWEN3VL_CACHE or ~/.cache/builder_qwen3vl)")
    p.add_argument("--work", default=None, help="scratch folder for bundles and results (default CACHE/bench-SHAPE)")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="where benchmarks.md/.json/.png go")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--slow-repeats", type=int, default=1, help="repeats of HF bf16 vision and the large-image HF TTFT")
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--hf-bf16-2048", action="store_true", help="also HF bf16 decode at the largest context (slow prefill)")
    p.add_argument("--extra-options", default="", help="--extra_options for the bundle build (e.g. block_size=128)")
    p.add_argument("--only", nargs="+", choices=PHASES, help="run these phases only (others kept from --resume)")
    p.add_argument("--resume", action="store_true", help="keep phase results of an earlier run in the same work folder")
    p.add_argument("--report-only", action="store_true", help="rewrite docs from the results in the work folder")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    if args.phase:  # inside a child process
        s = Settings.load(args.work)
        write_result(s, args.phase, child_phase(args.phase, s))
        return 0

    cache = Path(args.cache) if args.cache else cache_root()
    work = Path(args.work) if args.work else cache / f"bench-{args.shape}"
    if args.report_only:
        import report

        s = Settings.load(work)
        run = json.loads((work / "run.json").read_text())
        report.write_all(s, Path(args.docs), run["command"], datetime.datetime.fromisoformat(run["started"]), run["total_s"])
        return 0
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    ckpt = ensure_checkpoint(args.shape, cache)
    s = Settings(shape=args.shape, checkpoint=str(ckpt), work=str(work), contexts=args.contexts,
                 decode_steps=args.decode_steps, repeats=args.repeats, slow_repeats=args.slow_repeats,
                 hf_bf16_2048=args.hf_bf16_2048, extra_options=args.extra_options)
    s.save()
    for name in PHASES:
        if args.only and name not in args.only:
            continue
        run_phase(name, s, args.resume)
    import report

    command = ("python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    total = time.perf_counter() - t0
    (work / "run.json").write_text(json.dumps({"command": command, "started": started.isoformat(), "total_s": total}))
    report.write_all(s, Path(args.docs), command, started, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
