"""llama.cpp for benchmarks/peers.py: its build from the tree vendored in the llama-cpp-python sdist, the GGUF
conversion of a checkpoint (f16 text + f16 mmproj, the text quantized to Q4_0), the command lines of its tools
and the parsing of their output. ``run_measured`` runs every engine's measuring process (wall time, peak RSS).

The build, the converter's venv and the GGUF files are cached (under ~/.cache/builder_qwen3vl/peers/ by default);
each step is skipped when its output exists. Only llama.cpp's own tools run: nothing of it is copied here.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.peers.llamacpp")
SDIST = "llama-cpp-python==0.3.36"
TOOLS = ("llama-mtmd-cli", "llama-bench", "llama-quantize")
# torch first from the machine's CPU wheels: the converter's requirements pin another torch (a CUDA download).
VENV_TORCH = "torch==2.13.0"
# mtmd-cli's default context is the model's (262144 at these shapes): its f16 KV cache alone outgrows 24 GiB
CONTEXT = 4096


class StepError(RuntimeError):
    """A preparation step failed; the message is one line naming the step and its log."""


def run_logged(cmd: list[str], log_path: Path, what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    log.info("%s: $ %s", what, home_short(" ".join(map(str, cmd))))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        code = subprocess.run([str(c) for c in cmd], check=False, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode
    if code != 0:
        tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-1:] or [""]
        raise StepError(home_short(f"{what} failed (exit {code}): {tail[0][:200]} (log: {log_path})"))


def home_short(text: str | Path) -> str:
    """A path or message for logs and reports, the home folder as ~."""
    return str(text).replace(str(Path.home()), "~")


def source_tree(root: Path) -> Path:
    """vendor/llama.cpp of the sdist, unpacked to ROOT/src."""
    src = root / "src"
    if (src / "CMakeLists.txt").exists():
        return src
    sdist_dir = root / "sdist"
    if not list(sdist_dir.glob("*.tar.gz")):
        run_logged([sys.executable, "-m", "pip", "download", SDIST, "--no-binary", ":all:", "--no-deps", "-d", sdist_dir],
                   root / "download.log", "sdist download")
    archive = max(sdist_dir.glob("*.tar.gz"))
    unpack = root / "unpack"
    shutil.rmtree(unpack, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(unpack, filter="data")
    vendored = next(unpack.glob("*/vendor/llama.cpp"))
    (vendored / ".git").unlink(missing_ok=True)  # a submodule pointer to a repository that is not there
    vendored.rename(src)
    shutil.rmtree(unpack)
    return src


def ensure_build(root: Path) -> Path:
    """The bin folder with llama-mtmd-cli, llama-bench and llama-quantize (a Release build, -march=native)."""
    bin_dir = root / "build" / "bin"
    if all((bin_dir / t).exists() for t in TOOLS):
        return bin_dir
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a second caller finds the tools built
        if all((bin_dir / t).exists() for t in TOOLS):
            return bin_dir
        return _build(root, bin_dir)


def _build(root: Path, bin_dir: Path) -> Path:
    src = source_tree(root)
    # LLAMA_CURL is the older name of the download switch (this tree's is LLAMA_OPENSSL): both off.
    run_logged(["cmake", "-S", src, "-B", root / "build", "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF"],
               root / "cmake-configure.log", "llama.cpp cmake configure")
    start = time.perf_counter()
    run_logged(["cmake", "--build", root / "build", "-j", str(os.cpu_count() or 2), "--target", *TOOLS],
               root / "build.log", "llama.cpp build")
    log.info("llama.cpp built in %.0f s", time.perf_counter() - start)
    return bin_dir


def converter_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src / "gguf-py"), env.get("PYTHONPATH")]))
    return env


def converter_venv(root: Path) -> Path:
    """A venv with the converter's requirements (torch from the CPU wheels first)."""
    venv = root.parent / "llama-venv"
    python = venv / "bin" / "python"
    if (venv / "ready").exists():
        return python
    run_logged([sys.executable, "-m", "venv", venv], root / "llama-venv.log", "llama-venv create")
    run_logged([python, "-m", "pip", "install", VENV_TORCH], root / "llama-venv-torch.log", "llama-venv torch")
    reqs = root / "src" / "requirements" / "requirements-convert_hf_to_gguf.txt"
    # the requirements' torch pin is dropped: the CPU torch above stands in for it
    kept = [ln for ln in reqs.read_text().splitlines() if not ln.startswith(("torch", "--extra-index-url"))]
    (venv / "requirements.txt").write_text("\n".join(kept).replace("-r ./", f"-r {reqs.parent}/") + "\n")
    run_logged([python, "-m", "pip", "install", "-r", venv / "requirements.txt"], root / "llama-venv-reqs.log", "llama-venv requirements")
    (venv / "ready").write_text("")
    return python


def convert(checkpoint: Path, out: Path, root: Path, python: str = sys.executable) -> dict[str, Any]:
    """model-Q4_0.gguf and mmproj-model-f16.gguf in ``out``; the f16 text GGUF is removed after quantizing.
    The converter runs with ``python`` first (the main venv); when it fails there, in the llama-venv."""
    q4, mmproj = out / "model-Q4_0.gguf", out / "mmproj-model-f16.gguf"
    info_path = out / "convert.json"
    if q4.exists() and mmproj.exists() and info_path.exists():
        return json.loads(info_path.read_text())
    src, bin_dir = source_tree(root), ensure_build(root)
    out.mkdir(parents=True, exist_ok=True)
    f16 = out / "model-f16.gguf"
    script = src / "convert_hf_to_gguf.py"
    info: dict[str, Any] = {}
    start = time.perf_counter()
    import importlib.util

    first: str | None = python
    if python == sys.executable and importlib.util.find_spec("sentencepiece") is None:
        # the converter's Qwen vocabulary path imports sentencepiece before it falls back to the BPE files
        info["main_venv_skipped"] = "no sentencepiece in the main venv"
        first = None
    for attempt, py in enumerate((first, None)):
        if attempt == 0 and py is None:
            continue
        py = py or str(converter_venv(root))
        try:
            if not f16.exists() and not q4.exists():
                run_logged([py, script, checkpoint, "--outfile", f16, "--outtype", "f16"], out / "convert-text.log",
                           "convert_hf_to_gguf (text)", converter_env(src))
            if not mmproj.exists():
                run_logged([py, script, checkpoint, "--outfile", mmproj, "--outtype", "f16", "--mmproj"],
                           out / "convert-mmproj.log", "convert_hf_to_gguf (mmproj)", converter_env(src))
            info["converter_python"] = "main venv" if attempt == 0 else "llama-venv"
            info["converter_versions"] = subprocess.run(
                [py, "-c", "import transformers, torch; print(transformers.__version__, torch.__version__)"],
                check=False, capture_output=True, text=True).stdout.strip()
            break
        except StepError as err:
            if attempt:
                raise
            log.warning("%s; trying the llama-venv", err)
            info["main_venv_error"] = str(err)
    info["convert_s"] = time.perf_counter() - start
    if not q4.exists():
        start = time.perf_counter()
        run_logged([bin_dir / "llama-quantize", f16, q4, "Q4_0", "2"], out / "quantize.log", "llama-quantize Q4_0")
        info["quantize_s"] = time.perf_counter() - start
        f16.unlink()
    info_path.write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------- timed runs

def run_measured(cmd: list[str], log_path: Path, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``cmd``; its stdout, wall seconds and peak RSS (getrusage of the child). Raises with the last error line."""
    with open(log_path, "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=cwd, text=True)
        out = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()] or [""]
        raise RuntimeError(f"exit {code}: {lines[-1][:300]} (log: {home_short(log_path)})")
    return {"stdout": out, "wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024}


_STAMP = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")


def _stamp_s(line: str) -> float | None:
    m = _STAMP.match(line)
    if not m:
        return None
    mins, secs, ms, us = (int(g) for g in m.groups())
    return mins * 60 + secs + ms / 1e3 + us / 1e6


def parse_mtmd(text: str) -> dict[str, Any]:
    """The figures of one ``llama-mtmd-cli -n 1 -lv 4 --log-timestamps`` run.

    ``-lv 4``: the library's own lines (``llama_perf_context_print``, "image decoded") are logged at verbosity 4
    (trace); at the default 3 mtmd-cli prints none of them. The lines used:

    - ``llama_perf_context_print: prompt eval time = X ms / N tokens``: llama_context's prompt-eval clock runs from
      the start of the first prompt decode to the synchronisation before the first sampling, so in this tree it spans
      the first text chunk, the image encode that mtmd-cli runs between the decodes, the image embeddings' decode
      and the last text chunk (the 1-token answer's decode is never synchronised before the print: ``eval time`` is
      0 there).
    - ``mtmd batch encoding done in X ms`` (the vision encoder) and ``image decoded (batch 1/1) in X ms`` (the
      image embeddings through the text model): kept beside it; when the prompt-eval clock is shorter than the two
      together (a tree that stops the clock between decodes), the encode is added to it.

    ``ttft_s``: that sum, what a user waits once the model is loaded: image encode + prompt eval. The greedy
    sampling of the first token (an argmax over the vocabulary, well under a millisecond) is not printed and not
    counted; nor are reading and resizing the picture, which ``ttft_wall_s`` includes: the timestamps from
    ``main: loading model`` (logged once both models are loaded and warmed up) to the perf summary, the answered
    token's decode included."""
    lines = text.splitlines()

    def ms(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1)) / 1e3 if m else None

    prompt_eval = ms(r"prompt eval time =\s*([0-9.]+) ms")
    if prompt_eval is None:
        raise RuntimeError("llama-mtmd-cli printed no llama_perf_context_print lines (needs -lv 4)")
    encode = ms(r"mtmd batch encoding done in (\d+) ms") or 0.0
    image_decode = ms(r"image decoded \(batch \d+/\d+\) in (\d+) ms") or 0.0
    ttft = prompt_eval if prompt_eval >= encode + image_decode else prompt_eval + encode
    loaded = next((_stamp_s(ln) for ln in lines if "main: loading model" in ln), None)
    perf = next((_stamp_s(ln) for ln in lines if "llama_perf_context_print:" in ln and "load time" in ln), None)
    prompt_tokens = re.search(r"prompt eval time =\s*[0-9.]+ ms /\s*(\d+) tokens", text)
    image_tokens = re.search(r"n_tokens_batch = (\d+)", text)
    return {"ttft_s": ttft, "ttft_wall_s": perf - loaded if loaded is not None and perf is not None else None,
            "prompt_eval_s": prompt_eval, "encode_s": encode, "image_decode_s": image_decode,
            "load_s": ms(r"load time =\s*([0-9.]+) ms"), "prompt_tokens": int(prompt_tokens.group(1)) if prompt_tokens else None,
            "image_tokens": int(image_tokens.group(1)) if image_tokens else None}


def mtmd_command(bin_dir: Path, gguf: Path, mmproj: Path, image: Path, question: str, threads: int) -> list[str]:
    return [str(bin_dir / "llama-mtmd-cli"), "-m", str(gguf), "--mmproj", str(mmproj), "--image", str(image), "-p", question,
            "-n", "1", "-t", str(threads), "--temp", "0", "-c", str(CONTEXT), "-lv", "4", "--log-timestamps"]


def bench_command(bin_dir: Path, gguf: Path, prompt: int, gen: int, depth: int, threads: int, reps: int) -> list[str]:
    return [str(bin_dir / "llama-bench"), "-m", str(gguf), "-p", str(prompt), "-n", str(gen), "-d", str(depth),
            "-t", str(threads), "-r", str(reps), "-o", "json"]


def parse_bench(text: str) -> dict[str, Any]:
    """llama-bench -o json (this tree's: a JSON list of tests, each with n_prompt, n_gen, n_depth, avg_ts,
    samples_ts): the first test's tokens/s and settings. Its clock covers the -p/-n work only: the -d context is
    processed (or its state restored) before the clock starts, after one untimed warm-up run."""
    start = text.find("[")
    tests = json.loads(text[start:text.rfind("]") + 1])
    t = tests[0]
    return {"tokens_per_s": t["avg_ts"], "samples_ts": t.get("samples_ts"), "n_prompt": t["n_prompt"], "n_gen": t["n_gen"],
            "n_depth": t.get("n_depth"), "build_commit": t.get("build_commit"), "flash_attn": t.get("flash_attn"),
            "type_k": t.get("type_k"), "n_batch": t.get("n_batch"), "n_ubatch": t.get("n_ubatch")}
