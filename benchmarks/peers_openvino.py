"""OpenVINO GenAI for benchmarks/peers.py: its venv, the int4 export of a checkpoint by optimum-intel, and (run
with the venv's python) one measurement of ``openvino_genai.VLMPipeline``.

    python benchmarks/peers_openvino.py measure --model DIR --figure ttft --image IMG --question Q [--threads 2]
    python benchmarks/peers_openvino.py measure --model DIR --figure text --text-file T --new-tokens 33 --prompt-tokens 256

The export is ``optimum-cli export openvino --task image-text-to-text --weight-format int4`` (data-free); at the 2B
shape it peaks near 12 GB of RSS (the checkpoint in fp32 while traced) and takes about 15 minutes on 2 busy cores.
optimum-intel refuses qwen3_vl_moe ("Trying to export a qwen3_vl_moe model, that is a custom or unsupported
architecture"): the MoE shape has no OpenVINO row.

The measuring side imports only the standard library, numpy, PIL, openvino and openvino_genai: it runs in the
OpenVINO venv (optimum-intel 2.2 needs transformers 4.57, the main venv has 5.x). The pipeline runs on the CPU with
``INFERENCE_NUM_THREADS``; every figure comes from the result's perf_metrics (milliseconds, read as seconds). It
prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.peers.openvino")
# torch from the machine's CPU wheels first, and held there: torchvision's newest release pulls another torch (CUDA).
# optimum-intel requires torchvision; the version that matches torch 2.13 is installed and then removed (see below).
PACKAGES = ("optimum-intel[openvino]", "openvino-genai", "nncf", "transformers==4.57.*", "torchvision==0.28.*", "pillow")
TORCH = "torch==2.13.0"
CONFIG_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                "chat_template.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def _run(cmd: list[Any], log_path: Path, what: str, env: dict[str, str] | None = None) -> None:
    from peers_llamacpp import run_logged

    run_logged(cmd, log_path, what, env)


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if (venv / "ready").exists():
        return python
    logs = venv.parent / "logs"
    _run([sys.executable, "-m", "venv", venv], logs / "ov-venv.log", "ov-venv create")
    _run([python, "-m", "pip", "install", TORCH], logs / "ov-venv-torch.log", "ov-venv torch")
    (venv / "constraints.txt").write_text(TORCH + "\n")
    _run([python, "-m", "pip", "install", "-c", venv / "constraints.txt", *PACKAGES], logs / "ov-venv-packages.log",
         "ov-venv packages")
    # the PyPI torchvision for torch 2.13 is built against its CUDA torch: its operators fail to load with the CPU
    # torch ("operator torchvision::nms does not exist") and break transformers' imports; the export needs none of it
    _run([python, "-m", "pip", "uninstall", "-y", "torchvision"], logs / "ov-venv-torchvision.log", "ov-venv torchvision")
    (venv / "ready").write_text("")
    return python


def versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('openvino', 'openvino-genai', 'optimum-intel', 'nncf', 'transformers', 'torch')}))")
    out = subprocess.run([str(python), "-c", code], check=False, capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip().splitlines()[-1:]}


def exporter_input(checkpoint: Path, folder: Path) -> tuple[Path, list[str]]:
    """A folder the exporter reads: the checkpoint's weights linked, its configs copied, each config changed where
    transformers 4.57 reads it differently from the transformers that wrote it (the changes are returned)."""
    folder.mkdir(parents=True, exist_ok=True)
    changes: list[str] = []
    for src in checkpoint.iterdir():
        dst = folder / src.name
        if dst.exists() or dst.is_symlink():
            continue
        if src.suffix == ".safetensors":
            dst.symlink_to(src)
        elif src.is_file():
            shutil.copy2(src, dst)
    cfg = json.loads((folder / "config.json").read_text())
    for section in (cfg, cfg.get("text_config", {})):
        # transformers 5 writes rope_parameters (with rope_theta inside); 4.57 reads rope_scaling + rope_theta
        params = section.get("rope_parameters")
        if params and "rope_scaling" not in section:
            section["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
            section.setdefault("rope_theta", params.get("rope_theta"))
            changes.append("rope_parameters -> rope_scaling + rope_theta")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder, changes


def export(checkpoint: Path, out: Path, venv: Path, work: Path) -> dict[str, Any]:
    """optimum-cli export openvino --task image-text-to-text --weight-format int4 (data-free: no --dataset)."""
    info_path = out / "export.json"
    if info_path.exists() and (out / "openvino_language_model.xml").exists():
        return json.loads(info_path.read_text())
    python = ensure_venv(venv)
    source, changes = exporter_input(checkpoint, work / "ov-input")
    shutil.rmtree(out, ignore_errors=True)
    cli = venv / "bin" / "optimum-cli"
    start = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    _run([cli, "export", "openvino", "-m", source, "--task", "image-text-to-text", "--weight-format", "int4", out],
         work / "ov-export.log", "optimum-cli export openvino", env)
    info = {"export_s": time.perf_counter() - start, "config_changes": changes, "versions": versions(python)}
    info_path.write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------- inside the OpenVINO venv


def _pipeline(model: str, threads: int, prefix_cache: bool, precision: str | None = None) -> Any:
    """VLMPipeline on the CPU with ``threads`` inference threads; ``prefix_cache`` False: a SchedulerConfig with
    enable_prefix_caching off, True: the pipeline's defaults (prefix caching on). ``precision``: the CPU plugin's
    INFERENCE_PRECISION_HINT (None: OpenVINO's default, bf16 on a CPU with AVX512_BF16 or AMX, else f32)."""
    import openvino_genai as ov_genai

    props: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads}
    if precision:
        props["INFERENCE_PRECISION_HINT"] = precision
    if not prefix_cache:
        sched = ov_genai.SchedulerConfig()
        sched.enable_prefix_caching = False
        props["scheduler_config"] = sched
    return ov_genai.VLMPipeline(model, "CPU", **props)


def _image(path: str) -> Any:
    import numpy as np
    import openvino as ov
    from PIL import Image

    with Image.open(path) as img:
        return ov.Tensor(np.asarray(img.convert("RGB"))[None])


def _config(new_tokens: int, chat_template: bool = True) -> Any:
    """Greedy, exactly ``new_tokens`` tokens (min = max, EOS ignored)."""
    import openvino_genai as ov_genai

    cfg = ov_genai.GenerationConfig()
    cfg.max_new_tokens = cfg.min_new_tokens = new_tokens
    cfg.ignore_eos = True
    cfg.do_sample = False
    cfg.apply_chat_template = chat_template
    return cfg


def _metrics(res: Any) -> dict[str, Any]:
    m = res.perf_metrics
    out = {"ttft_s": m.get_ttft().mean / 1e3, "tpot_s": m.get_tpot().mean / 1e3, "generate_s": m.get_generate_duration().mean / 1e3,
           "prompt_tokens": int(m.get_num_input_tokens()), "generated_tokens": int(m.get_num_generated_tokens())}
    if hasattr(m, "get_prepare_embeddings_duration"):  # VLMPerfMetrics: preprocessing + vision encoder + embeddings
        out["prepare_embeddings_s"] = m.get_prepare_embeddings_duration().mean / 1e3
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One figure, after one untimed warm-up call: TTFT of an image question with the chat template and one new
    token (``ttft``: prefix cache off; ``ttft_cached``: the default pipeline, the same question asked again), or
    ``text``: the text prompt without chat template, exactly ``--new-tokens`` tokens: prefill from get_ttft, decode
    from get_tpot (its mean over the decode steps). Raises when a count differs from the one asked for."""
    start = time.perf_counter()
    pipe = _pipeline(args.model, args.threads, prefix_cache=args.figure == "ttft_cached", precision=args.precision)
    out: dict[str, Any] = {"load_s": time.perf_counter() - start, "inference_precision": args.precision or "default"}
    if args.figure in ("ttft", "ttft_cached"):
        def once() -> tuple[dict[str, Any], float]:
            t0 = time.perf_counter()
            res = pipe.generate(args.question, images=[_image(args.image)], generation_config=_config(1))
            return _metrics(res), time.perf_counter() - t0

        once()  # warm-up (for ttft_cached: the first asking, which fills the prefix cache)
        m, wall = once()
        out.update(ttft_s=m["ttft_s"], call_wall_s=wall, prompt_tokens=m["prompt_tokens"],
                   prepare_embeddings_s=m.get("prepare_embeddings_s"))
    else:
        text = Path(args.text_file).read_text()
        pipe.generate(text, generation_config=_config(args.new_tokens, chat_template=False))
        m = _metrics(pipe.generate(text, generation_config=_config(args.new_tokens, chat_template=False)))
        if args.prompt_tokens and m["prompt_tokens"] != args.prompt_tokens:
            raise ValueError(f"the text prompt is {m['prompt_tokens']} tokens to OpenVINO, not {args.prompt_tokens}")
        if m["generated_tokens"] != args.new_tokens:
            raise ValueError(f"OpenVINO generated {m['generated_tokens']} tokens, not {args.new_tokens}")
        out.update(prefill_s=m["ttft_s"], prefill_tokens_per_s=m["prompt_tokens"] / m["ttft_s"], decode_step_s=m["tpot_s"],
                   decode_tokens_per_s=1.0 / m["tpot_s"], prompt_tokens=m["prompt_tokens"],
                   generated_tokens=m["generated_tokens"], generate_s=m["generate_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model", required=True)
    m.add_argument("--figure", choices=("ttft", "ttft_cached", "text"), required=True)
    m.add_argument("--image")
    m.add_argument("--question")
    m.add_argument("--text-file")
    m.add_argument("--new-tokens", type=int, default=33)
    m.add_argument("--prompt-tokens", type=int, help="the text prompt's token count, checked")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--precision", choices=("f32", "bf16"), help="INFERENCE_PRECISION_HINT (default: OpenVINO's)")
    args = p.parse_args(argv)
    print(json.dumps(measure(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
