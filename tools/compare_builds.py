"""Build the same checkpoints with the package at a git commit and with the working tree; compare the bundles.

    python tools/compare_builds.py --base 6ad5d77 [--precisions fp32 fp16 int4] [--work cmp]

Checkpoints: a tiny random one (builder_qwen3vl.testing) and the shipped trained model. The base package is
taken with ``git archive`` into a temporary folder and run in a subprocess with that folder first on the path.
Prints, per checkpoint and precision, the files only one side has and every byte difference (tests/bundle_diff.py
locates it: which file, which ONNX field or initializer), then the same comparison with two known, deliberate
kinds of difference ignored: node metadata of vision_encoder.onnx (the exporter's stack traces, dropped since
65f3a57) and model.onnx's producer_version (the og wheel's commit since 581a914, not the checkout's).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

BUILD = ("import sys; from builder_qwen3vl import BuildOptions, build; "
         "build(BuildOptions(input=sys.argv[1], output=sys.argv[2], precision=sys.argv[3]))")


def package_at(commit: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "archive", commit, "builder_qwen3vl", "configs"], cwd=REPO, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest)
    return dest


def build_with(package_root: Path, ckpt: Path, out: Path, precision: str) -> None:
    res = subprocess.run([sys.executable, "-c", BUILD, str(ckpt), str(out), precision], cwd=package_root,
                         capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"build with {package_root} failed:\n{res.stderr[-3000:]}")


def without_known_differences(path: Path) -> bytes:
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    for node in model.graph.node:
        del node.metadata_props[:]
    model.producer_version = ""
    return model.SerializeToString()


def main() -> int:
    from bundle_diff import bundle_differences

    from builder_qwen3vl.shipped.assembly import shipped_checkpoint
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git commit of the package to compare with")
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int4"])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "compare_builds")
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    base = package_at(args.base, args.work / "base_package")
    ckpts = {"tiny": write_checkpoint(args.work / "tiny_ckpt", tiny_config()),
             "shipped": shipped_checkpoint(args.work / "cache")}
    for name, ckpt in ckpts.items():
        for precision in args.precisions:
            old, new = args.work / f"{name}_{precision}_base", args.work / f"{name}_{precision}_tree"
            build_with(base, ckpt, old, precision)
            build_with(REPO, ckpt, new, precision)
            only = sorted({f.name for f in old.iterdir()} ^ {f.name for f in new.iterdir()})
            raw = [d for d in bundle_differences(old, new) if "only in" not in d]
            onnx_same = all(without_known_differences(old / f) == without_known_differences(new / f)
                            for f in ("model.onnx", "vision_encoder.onnx", "embeddings.onnx"))
            print(f"{name} {precision}: files on one side only {only}; {len(raw)} byte differences {raw}; "
                  f"ONNX files equal without the known differences: {onnx_same}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
