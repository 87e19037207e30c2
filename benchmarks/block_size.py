"""The int4 decoder's MatMulNBits block size through og, bundles measured interleaved in one process.

    python benchmarks/block_size.py --checkpoint CKPT [--blocks 32 128 256] [--rounds 3] [--work DIR] [--docs docs/benchmarks.md]

Each block size is a bundle built as a user builds it (``python -m builder_qwen3vl -i CKPT -o OUT -p int4 -e cpu
--extra_options block_size=B``; kept in ``--work`` and reused) and run as a user runs it: og.Model with the
bundle's genai_config, og's processor, og.Generator. Every round measures every bundle in turn (the order
reversed every other round, so drift in the machine's speed falls on all of them alike): a 256-token text
prompt's prefill and the median of 16 decode steps after it (depth 256), and the time to the first token for a
448x448 picture with a 32-token question (benchmarks/common.py's images and question); the 1000x667 picture in
the first round only. Medians over ``--rounds``. onnxruntime's MatMulNBits kernel with int8 compute
(accuracy_level 4) converts its int32 sums and applies the scales once per block, so the block size sets how
much of its time is that overhead (benchmarks/gemm_limits.py times the kernel alone). Not part of CI.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Settings, benchmark_images, cpu_info, question_text, text_prompt_ids, write_docs_section  # noqa: E402
from measure_onnx import _timed_steps  # noqa: E402

log = logging.getLogger("benchmarks.block_size")
DOCS_SECTION = "## The int4 decoder's block size through og (`benchmarks/block_size.py`)"
DECODE_STEPS = 16


def bundle_for(checkpoint: Path, work: Path, block: int) -> Path:
    out = work / f"bundle-int4-b{block}"
    if not (out / "genai_config.json").exists():
        log.info("building %s", out)
        subprocess.run([sys.executable, "-m", "builder_qwen3vl", "-i", str(checkpoint), "-o", str(out), "-p", "int4",
                        "-e", "cpu", "--overwrite", "--extra_options", f"block_size={block}"], check=True)
    check_block(out, block)
    return out


def check_block(bundle: Path, block: int) -> None:
    """The bundle's MatMulNBits nodes all have ``block_size`` = ``block`` (a reused folder could be another's)."""
    import onnx

    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    found = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
    if found != {block}:
        raise RuntimeError(f"{bundle}/model.onnx has MatMulNBits block sizes {sorted(found)}, expected {block}")


def one_round(model: Any, images: list[dict[str, Any]], prompt: str, first: bool) -> dict[str, float]:
    import onnxruntime_genai as og

    from builder_qwen3vl.runtime.og_run import greedy

    prefill, steps = _timed_steps(model, text_prompt_ids(256), DECODE_STEPS)
    out = {"prefill_256_s": prefill, "decode_step_s": statistics.median(steps)}
    processor = model.create_multimodal_processor()
    for image in images if first else images[:1]:
        start = time.perf_counter()
        next(greedy(model, processor(prompt, images=og.Images.open(image["path"])), 1))
        out[f"ttft_{image['name']}_s"] = time.perf_counter() - start
    return out


def measure(bundles: dict[int, Path], rounds: int, work: Path) -> dict[int, dict[str, float]]:
    import onnxruntime_genai as og

    from builder_qwen3vl.runtime.og_run import chat_prompt, load_model

    models = {block: load_model(path) for block, path in bundles.items()}
    tokenizer = og.Tokenizer(next(iter(models.values())))
    prompt = chat_prompt(tokenizer, question_text(lambda s: list(tokenizer.encode(s))), num_images=1)
    images = benchmark_images(Settings(shape="2b", checkpoint="", work=str(work)))
    runs: dict[int, list[dict[str, float]]] = {block: [] for block in models}
    for r in range(rounds):
        for block in (list(models) if r % 2 == 0 else list(reversed(models))):
            runs[block].append(one_round(models[block], images, prompt, first=r == 0))
            log.info("round %d block %d: %s", r + 1, block, {k: round(v, 3) for k, v in runs[block][-1].items()})
    return {block: {key: statistics.median(run[key] for run in rs if key in run) for key in rs[0]} for block, rs in runs.items()}


def markdown(results: dict[int, dict[str, float]], rounds: int, command: str) -> str:
    cpu = cpu_info()
    base = results[min(results)]
    lines = [DOCS_SECTION, "", f"CPU: {cpu['model']} ({cpu['logical_cpus']} logical CPUs), ISA: {', '.join(cpu['isa'])}. Command: `{command}`. "
             f"Medians of {rounds} interleaved rounds (1000x667: first round only); the 2B shape, random weights.", "",
             "| block_size | prefill 256 tokens | decode @256 | TTFT 448x448 | TTFT 1000x667 |", "|---|---|---|---|---|"]
    for block, r in results.items():
        rel = "" if block == min(results) else f" ({base['prefill_256_s'] / r['prefill_256_s']:.2f}x)"
        lines.append(f"| {block} | {256 / r['prefill_256_s']:.1f} tok/s{rel} | {1 / r['decode_step_s']:.1f} tok/s "
                     f"| {r['ttft_448x448_s']:.2f} s | {r.get('ttft_1000x667_s', float('nan')):.2f} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a Qwen3-VL checkpoint folder (e.g. the 2B shape)")
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 128, 256])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "builder_qwen3vl" / "block-size")
    p.add_argument("--docs", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    bundles = {block: bundle_for(args.checkpoint, args.work, block) for block in args.blocks}
    results = measure(bundles, args.rounds, args.work)
    command = (f"python benchmarks/block_size.py --checkpoint CKPT --blocks {' '.join(map(str, args.blocks))} "
               f"--rounds {args.rounds}")
    text = markdown(results, args.rounds, command)
    print(text)
    if args.docs:
        write_docs_section(DOCS_SECTION, text, args.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
