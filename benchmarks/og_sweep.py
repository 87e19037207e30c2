"""The INT4 decoder's MatMulNBits settings swept through og's runtime: accuracy_level x block_size.

    python benchmarks/og_sweep.py [--levels 0,1,4] [--blocks 32,64,128] [--repeats 2] [--work DIR]

Each configuration is a whole bundle built as a user builds it
(`python -m builder_qwen3vl -p int4 -e cpu --extra_options accuracy_level=L,block_size=B`) and measured as
a user runs it, with the bundle's own genai_config (benchmarks/run.py's phases, each in a child process):
- ttft_og: og's processor + og.Generator to the first token, 448x448 (229 prompt tokens) and 1000x667
  (693 prompt tokens) images: the vision encoder is the same in every configuration, so the differences
  are the decoder's prefill;
- decode_og: text prompts of 256 and 2048 tokens (their prefill timed too), then 32 greedy steps.
HF fp32's time to first token is measured once in the same run (ratios in the table). Each bundle is
deleted after it is measured (1.6 GB each). Not part of CI; ~45 min on 2 cores for the 9 configurations.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Settings, read_result  # noqa: E402
from run import cache_root, ensure_checkpoint, run_phase  # noqa: E402

log = logging.getLogger("benchmarks.og_sweep")


def measure(root: Path, shape: str, ckpt: Path, level: int, block: int, repeats: int, keep: bool) -> dict[str, Any]:
    s = Settings(shape=shape, checkpoint=str(ckpt), work=str(root / f"acc{level}_b{block}"), repeats=repeats,
                 extra_options=f"accuracy_level={level},block_size={block}")
    s.save()
    for phase in ("build", "ttft_og", "decode_og"):
        run_phase(phase, s, resume=True)
    record = Path(s.work) / "matmulnbits.json"  # what the build wrote, kept after the bundle is deleted
    if (s.bundle / "model.onnx").exists():
        record.write_text(json.dumps(sorted(matmulnbits_settings(s.bundle / "model.onnx"))))
    written = {tuple(pair) for pair in json.loads(record.read_text())}
    if written != {(level, block)}:
        raise RuntimeError(f"{s.bundle}/model.onnx has MatMulNBits (accuracy_level, block_size) {written}, expected {(level, block)}")
    if not keep:
        shutil.rmtree(s.bundle, ignore_errors=True)
    build, ttft, decode = (read_result(s, p) or {} for p in ("build", "ttft_og", "decode_og"))
    return {"accuracy_level": level, "block_size": block, "work": s.work, "build_s": build.get("wall_s"), "ttft": ttft, "decode": decode}


def matmulnbits_settings(path: Path) -> set[tuple[int, int]]:
    """The (accuracy_level, block_size) pairs of the decoder's MatMulNBits nodes, as built."""
    import onnx
    from onnx import helper

    found = set()
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            found.add((int(attrs.get("accuracy_level", 0)), int(attrs["block_size"])))
    return found


def table(rows: list[dict[str, Any]], hf: dict[str, Any]) -> str:
    hf448, hf1000 = (hf.get(k, {}).get("median_s") for k in ("448x448", "1000x667"))
    tokens = {k: rows[0]["ttft"].get(k, {}).get("prompt_tokens", "?") for k in ("448x448", "1000x667")} if rows else {}
    head = (f"| accuracy_level | block_size | TTFT 448x448 ({tokens.get('448x448')} tokens) | TTFT 1000x667 "
            f"({tokens.get('1000x667')} tokens) | prefill 256 | prefill 2048 | decode tok/s @256 | decode tok/s @2048 |")
    lines = [head, "|" + "---|" * 8]
    if hf448 and hf1000:
        lines.append(f"| HF fp32 | | {hf448:.2f} s | {hf1000:.2f} s | | | | |")
    for r in rows:
        t, d = r["ttft"], r["decode"]

        def ttft(name: str, ref: float | None) -> str:
            v = t.get(name, {}).get("median_s")
            return "-" if v is None else f"{v:.2f} s" + (f" ({v / ref:.2f}x HF)" if ref else "")

        def dec(ctx: str, key: str, fmt: str) -> str:
            v = d.get(ctx, {}).get(key)
            return "-" if v is None else fmt.format(v)

        lines.append(f"| {r['accuracy_level']} | {r['block_size']} | {ttft('448x448', hf448)} | {ttft('1000x667', hf1000)} "
                     f"| {dec('256', 'prefill_s', '{:.2f} s')} | {dec('2048', 'prefill_s', '{:.2f} s')} "
                     f"| {dec('256', 'tokens_per_s', '{:.1f}')} | {dec('2048', 'tokens_per_s', '{:.1f}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="2b", choices=("tiny", "2b", "4b"), help="tiny: a smoke test of this script")
    p.add_argument("--levels", default="0,1,4")
    p.add_argument("--blocks", default="32,64,128")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of each TTFT (after one warm-up)")
    p.add_argument("--work", default=None, help="scratch folder (default CACHE/og-sweep)")
    p.add_argument("--keep-bundles", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cache = cache_root()
    root = Path(args.work) if args.work else cache / f"og-sweep-{args.shape}"
    ckpt = ensure_checkpoint(args.shape, cache)
    rows = [measure(root, args.shape, ckpt, int(level), int(block), args.repeats, args.keep_bundles)
            for block in args.blocks.split(",") for level in args.levels.split(",")]
    # ttft_hf runs on the checkpoint with og's input_ids for each image, saved by the first ttft_og.
    hf_settings = Settings(shape=args.shape, checkpoint=str(ckpt), work=str(root / "hf"), repeats=args.repeats, slow_repeats=args.repeats)
    hf_settings.save()
    for saved in Path(rows[0]["work"]).glob("ttft_inputs_*.npz"):
        shutil.copy2(saved, root / "hf" / saved.name)
    run_phase("ttft_hf", hf_settings, resume=True)
    hf = read_result(hf_settings, "ttft_hf") or {}
    report = {"command": "python benchmarks/og_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": rows, "ttft_hf_fp32": hf}
    (root / "sweep.json").write_text(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(table(rows, hf))
    return 0


if __name__ == "__main__":
    sys.exit(main())
