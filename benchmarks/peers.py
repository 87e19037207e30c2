"""Our int4 bundle against llama.cpp (Q4_0 + f16 mmproj) and OpenVINO GenAI (int4), one checkpoint, one window.

    python benchmarks/peers.py --shape 2b --json peers-2b.json --docs docs/benchmarks.md
    python benchmarks/peers.py --shape 30b-a3b --layers 4 8 --json peers-moe.json --docs docs/benchmarks.md
    python benchmarks/peers.py --shape 2b --only ttft --rounds 3     # measure again, the engines kept
    python benchmarks/peers.py --shape 2b --ours-bundle ~/bundles/2b-int4   # an existing bundle of ours

From one random-weight checkpoint of the shape (the 30B-A3B MoE cut to ``--layers`` text layers, as
benchmarks/moe_shape.py makes it) it prepares, each step cached under ~/.cache/builder_qwen3vl/peers/SHAPE/:
ours (``python -m builder_qwen3vl -p int4 -e cpu``; the folder is named by ``git rev-parse --short HEAD``, a hash
of ``git diff HEAD -- builder_qwen3vl`` when the package's tracked files differ, and ``--ours-extra``; or
``--ours-bundle``, one existing bundle per layer count, used as it is), llama.cpp (built from the llama-cpp-python
sdist's vendored tree, benchmarks/peers_llamacpp.py) and OpenVINO GenAI (optimum-intel int4 export in its own venv,
benchmarks/peers_openvino.py). Then it times the three round-robin per figure, each run in its own process,
medians over ``--rounds``:

- TTFT of a 448x448 and a 1000x667 picture (already at HF's target size) with the same 32-token question, the
  model loaded: ours og.Model + its multimodal processor + og.Generator, picture file to first token, after one
  warm-up call; llama.cpp ``llama-mtmd-cli -n 1 --temp 0 -t 2 -c 4096 -lv 4``, its printed prompt-eval clock (image
  encode + prompt eval, see peers_llamacpp.parse_mtmd); OpenVINO VLMPipeline, prefix cache off,
  perf_metrics.get_ttft() after one warm-up call; and OpenVINO's default prefix cache on a repeated identical
  question (its own row).
- prefill of 256 text tokens at depth 0 and decode at depth 256 (32 steps): llama-bench ``-p 256 -n 0`` and
  ``-p 0 -n 32 -d 256`` (its -d puts every test of a call at that depth); ours og.Generator; OpenVINO
  perf_metrics (TTFT of the 256 tokens, TPOT over 33 generated tokens: the prefill's and 32 decode steps).
- peak RSS of each engine's process of the 448x448 TTFT run; the engines' files on disk; the CPU's ISA.

Stages (``--only``): checkpoint ours llamacpp openvino ttft cached text. The tables, markdown and plot are
benchmarks/peers_report.py's. Not part of CI.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers_llamacpp as llamacpp
import peers_openvino as openvino
import peers_report as rep
from common import (
    Settings,
    benchmark_images,
    cpu_info,
    question_text,
    write_docs_section,
)

log = logging.getLogger("benchmarks.peers")
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("checkpoint", "ours", "llamacpp", "openvino", "ttft", "cached", "text")
TEXT_TOKENS, DECODE_STEPS, THREADS = 256, 32, 2
DOCS_HEADING = "## Against llama.cpp and OpenVINO GenAI"


def peers_root() -> Path:
    return Path(os.environ.get("BUILDER_QWEN3VL_CACHE", Path.home() / ".cache" / "builder_qwen3vl")) / "peers"


def git_short_hash() -> str:
    """``git rev-parse --short HEAD``; with "-dirty-" and a hash of ``git diff HEAD -- builder_qwen3vl`` when the
    package's tracked files differ from the commit (untracked files and the benchmarks do not count)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "nogit"
    diff = git("diff", "HEAD", "--", "builder_qwen3vl")
    if not diff:
        return head
    return f"{head}-dirty-{hashlib.sha1(diff.encode()).hexdigest()[:8]}"


class Instance:
    """One checkpoint (the 2B shape, or the MoE shape cut to N layers) and the engines built from it."""

    def __init__(self, shape: str, layers: int | None, ours_extra: list[str], ours_bundle: Path | None = None):
        self.shape, self.layers = shape, layers
        self.name = shape if layers is None else f"{shape}-L{layers}"
        self.dir = peers_root() / self.name
        self.checkpoint = self.dir / "checkpoint"
        extra = "".join("-" + re.sub(r"[^A-Za-z0-9.=_]", "_", kv) for kv in ours_extra)
        # --ours-bundle: an existing bundle, used as it is (never built, never linked)
        self.given_bundle = ours_bundle is not None
        self.bundle = ours_bundle.expanduser().resolve() if ours_bundle else self.dir / f"bundle-int4-{git_short_hash()}{extra}"
        self.ours_extra = ours_extra
        self.gguf_dir = self.dir / "llamacpp"
        self.ov_dir = self.dir / "openvino-int4"
        self.results_path = self.dir / "results.json"

    def results(self) -> dict[str, Any]:
        return json.loads(self.results_path.read_text()) if self.results_path.exists() else {}

    def save(self, results: dict[str, Any]) -> None:
        self.results_path.write_text(json.dumps(results, indent=2))


# ---------------------------------------------------------------- preparation


def prepare_checkpoint(inst: Instance) -> None:
    if (inst.checkpoint / "model.safetensors.index.json").exists() or list(inst.checkpoint.glob("model*.safetensors")):
        return
    log.info("writing the random-weight checkpoint %s", llamacpp.home_short(inst.checkpoint))
    if inst.layers is None:
        from builder_qwen3vl.testing.checkpoints import (
            reference_config,
            write_checkpoint,
        )

        write_checkpoint(inst.checkpoint, reference_config(inst.shape), dtype="bf16", shards=3)
    else:
        from moe_shape import shape_config, write_checkpoint

        write_checkpoint(inst.checkpoint, shape_config(inst.layers))


def prepare_ours(inst: Instance) -> None:
    if inst.given_bundle:
        log.info("ours: the given bundle %s", llamacpp.home_short(inst.bundle))
        return
    if not (inst.bundle / "genai_config.json").exists():
        partial = inst.bundle.with_name(inst.bundle.name + ".partial")
        cmd = [sys.executable, "-m", "builder_qwen3vl", "-i", str(inst.checkpoint), "-o", str(partial), "-p", "int4",
               "-e", "cpu", "--overwrite"] + (["--extra_options", *inst.ours_extra] if inst.ours_extra else [])
        start = time.perf_counter()
        llamacpp.run_logged(cmd, inst.dir / "build-ours.log", "our bundle build", cwd=ROOT)
        partial.rename(inst.bundle)
        log.info("our bundle built in %.0f s", time.perf_counter() - start)
    link = inst.dir / "bundle-int4"  # a stable name for other tools; an existing one is left as it is (in use)
    if not (link.is_symlink() or link.exists()):
        link.symlink_to(inst.bundle.name)


def prepare(inst: Instance, stages: set[str], results: dict[str, Any]) -> None:
    """Each engine's preparation; an engine that cannot be prepared is skipped with its one-line reason."""
    skipped = results.setdefault("skipped", {})
    if "checkpoint" in stages:
        prepare_checkpoint(inst)
    steps = (("ours", "ours", lambda: prepare_ours(inst)),
             ("llamacpp", "llama.cpp", lambda: results.setdefault("prepare", {}).__setitem__(
                 "llama.cpp", llamacpp.convert(inst.checkpoint, inst.gguf_dir, peers_root() / "llama.cpp"))),
             ("openvino", "openvino", lambda: results.setdefault("prepare", {}).__setitem__(
                 "openvino", openvino.export(inst.checkpoint, inst.ov_dir, peers_root() / "ov-venv", inst.dir))))
    for stage, engine, step in steps:
        if stage not in stages:
            continue
        try:
            step()
            skipped.pop(engine, None)
        except (llamacpp.StepError, OSError) as err:
            skipped[engine] = llamacpp.home_short(str(err))
            log.error("%s: %s", engine, skipped[engine])


# ---------------------------------------------------------------- one measurement, in a child process


def ours_child(args: argparse.Namespace) -> dict[str, Any]:
    """Inside a child: og as a user runs it on our bundle, one untimed warm-up call, then one timed."""
    import onnxruntime_genai as og
    from measure_onnx import _timed_steps

    from builder_qwen3vl.runtime.og_run import chat_prompt, greedy, load_model

    start = time.perf_counter()
    model = load_model(args.bundle)
    out: dict[str, Any] = {"load_s": time.perf_counter() - start}
    if args.figure == "ttft":
        tokenizer = og.Tokenizer(model)
        prompt = chat_prompt(tokenizer, args.question, num_images=1)
        processor = model.create_multimodal_processor()

        def once() -> tuple[float, int]:
            t0 = time.perf_counter()
            inputs = processor(prompt, images=og.Images.open(args.image))
            next(greedy(model, inputs, max_new_tokens=1))
            return time.perf_counter() - t0, int(inputs["input_ids"].as_numpy().shape[-1])

        once()
        out["ttft_s"], out["prompt_tokens"] = once()
    else:
        import numpy as np

        ids = np.array([json.loads(Path(args.text_ids).read_text())], dtype=np.int64)
        _timed_steps(model, ids, 2)
        prefill_s, steps = _timed_steps(model, ids, DECODE_STEPS)
        step = statistics.median(steps)
        out.update(prefill_s=prefill_s, prefill_tokens_per_s=ids.shape[-1] / prefill_s, decode_step_s=step,
                   decode_tokens_per_s=1.0 / step, prompt_tokens=int(ids.shape[-1]), generated_tokens=len(steps) + 1)
    return out


def inputs(inst: Instance) -> dict[str, Any]:
    """The two pictures (HF's target size), the 32-token question and the 256-token text (the checkpoint's tokenizer)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(inst.checkpoint / "tokenizer.json"))
    encode = lambda s: tok.encode(s, add_special_tokens=False).ids
    images = benchmark_images(Settings(shape=inst.name, checkpoint=str(inst.checkpoint), work=str(inst.dir)))
    passage = ("The river runs past the old mill and under the stone bridge, where children throw sticks into the "
               "water and watch them float away towards the sea. ") * 40
    ids = encode(passage)[:TEXT_TOKENS]
    text = tok.decode(ids)
    ids = encode(text)
    (inst.dir / "text_ids.json").write_text(json.dumps(ids))
    (inst.dir / "text.txt").write_text(text)
    return {"images": images, "question": question_text(encode), "text_tokens": len(ids)}


def measure_once(engine: str, figure: str, inst: Instance, ins: dict[str, Any], image: dict[str, Any] | None) -> dict[str, Any]:
    logs = inst.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"{engine}-{figure}" + (f"-{image['name']}" if image else "")
    if engine == "llama.cpp":
        bin_dir = llamacpp.ensure_build(peers_root() / "llama.cpp")
        gguf, mmproj = inst.gguf_dir / "model-Q4_0.gguf", inst.gguf_dir / "mmproj-model-f16.gguf"
        if figure == "ttft":
            cmd = llamacpp.mtmd_command(bin_dir, gguf, mmproj, Path(image["path"]), ins["question"], THREADS)
            res = llamacpp.run_measured(cmd, logs / f"{tag}.log", ROOT)
            out = llamacpp.parse_mtmd((logs / f"{tag}.log").read_text(errors="replace") + res["stdout"])
        else:
            pre = llamacpp.run_measured(llamacpp.bench_command(bin_dir, gguf, TEXT_TOKENS, 0, 0, THREADS, 1), logs / f"{tag}-pp.log", ROOT)
            res = llamacpp.run_measured(llamacpp.bench_command(bin_dir, gguf, 0, DECODE_STEPS, TEXT_TOKENS, THREADS, 1), logs / f"{tag}-tg.log", ROOT)
            pp, tg = llamacpp.parse_bench(pre["stdout"]), llamacpp.parse_bench(res["stdout"])
            if (pp["n_prompt"], tg["n_gen"], tg["n_depth"]) != (TEXT_TOKENS, DECODE_STEPS, TEXT_TOKENS):
                raise ValueError(f"llama-bench ran p={pp['n_prompt']} n={tg['n_gen']} d={tg['n_depth']}")
            out = {"prefill_tokens_per_s": pp["tokens_per_s"], "decode_tokens_per_s": tg["tokens_per_s"], "llama_bench": [pp, tg]}
    else:
        if engine == "ours":
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--figure", figure, "--bundle", str(inst.bundle)]
        else:
            cmd = [str(peers_root() / "ov-venv" / "bin" / "python"), str(Path(__file__).with_name("peers_openvino.py")),
                   "measure", "--model", str(inst.ov_dir), "--figure", figure, "--threads", str(THREADS),
                   "--new-tokens", str(DECODE_STEPS + 1), "--prompt-tokens", str(ins["text_tokens"])]
        if figure in ("ttft", "ttft_cached"):
            cmd += ["--image", image["path"], "--question", ins["question"]]
        else:
            cmd += ["--text-ids" if engine == "ours" else "--text-file",
                    str(inst.dir / ("text_ids.json" if engine == "ours" else "text.txt"))]
        res = llamacpp.run_measured(cmd, logs / f"{tag}.log", ROOT)
        out = json.loads(res["stdout"].strip().splitlines()[-1])
    out.update(process_wall_s=res["wall_s"], peak_rss_bytes=res["peak_rss_bytes"])
    return out


def measure(inst: Instance, stages: set[str], rounds: int, results: dict[str, Any]) -> None:
    """Round-robin: per figure, each round runs every engine once (the order turned by one each round)."""
    ins = inputs(inst)
    results["ours_bundle"] = llamacpp.home_short(inst.bundle)
    results["inputs"] = {"question": ins["question"], "text_tokens": ins["text_tokens"],
                         "images": [{k: im[k] for k in ("name", "grid_thw", "patches")} for im in ins["images"]]}
    figures: list[tuple[str, str, dict[str, Any] | None, tuple[str, ...]]] = []
    if "ttft" in stages:
        figures += [(f"ttft_{im['name']}", "ttft", im, rep.ENGINES) for im in ins["images"]]
    if "cached" in stages:
        figures.append((f"ttft_cached_{ins['images'][0]['name']}", "ttft_cached", ins["images"][0], ("openvino",)))
    if "text" in stages:
        figures.append(("text", "text", None, rep.ENGINES))
    skipped = results.get("skipped", {})
    for key, figure, image, engines in figures:
        engines = tuple(e for e in engines if e not in skipped)
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
        failed: dict[str, str] = {}
        for r in range(rounds):
            order = engines[r % len(engines):] + engines[: r % len(engines)] if engines else ()
            for engine in order:
                if engine in failed:
                    continue
                try:
                    runs[engine].append(measure_once(engine, figure, inst, ins, image))
                    log.info("%s %s round %d: %s", inst.name, key, r + 1, rep.summary(runs[engine][-1]))
                except (RuntimeError, ValueError, KeyError, json.JSONDecodeError) as err:
                    failed[engine] = f"{type(err).__name__}: {err}"
                    log.error("%s %s %s failed: %s", inst.name, key, engine, failed[engine])
        results.setdefault("figures", {})[key] = {
            engine: {"runs": rs, "median": rep.medians(rs)} if rs else {"error": failed.get(engine, "no run")}
            for engine, rs in runs.items()}
        results["figures"][key].update({e: {"error": f"skipped: {why}"} for e, why in skipped.items()})
        inst.save(results)


def versions() -> dict[str, Any]:
    import onnxruntime
    import onnxruntime_genai

    return {"ours": {"commit": git_short_hash(), "onnxruntime": onnxruntime.__version__, "onnxruntime_genai": onnxruntime_genai.__version__},
            "llama.cpp": {"source": f"vendored in {llamacpp.SDIST} (sdist)"},
            "openvino": openvino.versions(peers_root() / "ov-venv" / "bin" / "python")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="2b", choices=("2b", "4b", "30b-a3b"))
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8], help="text layers of the 30b-a3b cuts")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", nargs="+", choices=STAGES, help="run these stages only (the rest kept from the cache)")
    p.add_argument("--ours-extra", nargs="+", default=[], metavar="KEY=VALUE", help="--extra_options of our build")
    p.add_argument("--ours-bundle", type=Path, nargs="+", metavar="PATH",
                   help="existing bundles to measure instead of building one (one per --layers count, in its order)")
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument("--docs", type=Path, help="rewrite this page's section (and a PNG beside it)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--figure", "--bundle", "--image", "--question", "--text-ids"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.child:
        print(json.dumps(ours_child(args)))
        return 0
    stages = set(args.only or STAGES)
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    layer_counts: list[int | None] = sorted(args.layers) if args.shape == "30b-a3b" else [None]
    given = args.ours_bundle or [None] * len(layer_counts)
    if len(given) != len(layer_counts):
        p.error(f"--ours-bundle needs {len(layer_counts)} paths, one per layer count {layer_counts}")
    for path in args.ours_bundle or []:
        if not (path.expanduser() / "genai_config.json").exists():
            p.error(f"--ours-bundle {path} has no genai_config.json")
    order = sorted(range(len(layer_counts)), key=lambda i: (args.layers[i] if args.shape == "30b-a3b" else 0))
    instances = [Instance(args.shape, n, args.ours_extra, given[i]) for n, i in zip(layer_counts, order)]
    all_results = {}
    for inst in instances:
        inst.dir.mkdir(parents=True, exist_ok=True)
        results = inst.results()
        prepare(inst, stages, results)
        inst.save(results)
        if stages & {"ttft", "cached", "text"}:
            measure(inst, stages, args.rounds, results)
        results["disk_bytes"] = rep.disk_sizes(inst.bundle, inst.gguf_dir, inst.ov_dir)
        inst.save(results)
        all_results[inst.name] = results
    given = list(argv if argv is not None else sys.argv[1:])
    given = [Path(a).name if i and given[i - 1] == "--json" else a for i, a in enumerate(given)]  # no machine paths
    command = llamacpp.home_short("python benchmarks/peers.py " + " ".join(given))
    report = {"command": command.strip(), "shape": args.shape, "started": started.isoformat(), "total_s": time.perf_counter() - t0,
              "rounds": args.rounds, "threads": THREADS, "cpu": cpu_info(), "versions": versions(), "instances": all_results,
              "layers": layer_counts if args.shape == "30b-a3b" else None, "full_layers": rep.FULL_LAYERS}
    print(rep.tables(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.docs:
        png = args.docs.with_name(f"benchmarks_peers_{args.shape.replace('-', '_')}.png")
        rep.plot(report, png)
        heading = f"{DOCS_HEADING}: {args.shape} (`benchmarks/peers.py`)"
        write_docs_section(heading, rep.markdown(report, heading, png.name), args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
