"""Phases that run our bundle: vision encoder (onnxruntime), og runtime TTFT and decode, and the
plain onnxruntime decode loop used to compare our model.onnx with the og builder's text decoder."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import (Settings, benchmark_images, hf_vision_output_path, question_text, random_pixel_values,
                    text_prompt_ids, timed)

from builder_qwen3vl.ground.contract import VISION
from builder_qwen3vl.runtime.og_run import chat_prompt, greedy, load_model

OG_VISION_OUTPUTS = [t.name for t in VISION.outputs]  # og requests only these; the named extras are not computed

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def _session(path: Path, threads: int, profile: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def bundle_threads(settings: Settings, section: str) -> int:
    """The intra-op thread count the bundle's genai_config gives a session (og's default when absent:
    hardware_concurrency() / 2, as og 0.18's CreateSessionOptionsFromConfig)."""
    options = json.loads((settings.bundle / "genai_config.json").read_text())["model"][section]["session_options"]
    return int(options.get("intra_op_num_threads", max(1, (os.cpu_count() or 2) // 2)))


def threads_og(settings: Settings, ctx: int = 256, steps: int = 16) -> dict[str, Any]:
    """og decode at one context with the bundle's genai_config as written and with intra_op_num_threads
    removed (og's own default), 1 and 2: how og 0.18 treats each setting, measured."""
    import shutil


    results = {}
    for label, value in (("as written", "keep"), ("absent (og default)", None), ("1", 1), ("2", 2)):
        folder = Path(settings.work) / "threads-variant"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for f in settings.bundle.iterdir():
            if f.name != "genai_config.json":
                (folder / f.name).symlink_to(f)
        genai = json.loads((settings.bundle / "genai_config.json").read_text())
        for section in ("decoder", "embedding", "vision"):
            options = genai["model"][section]["session_options"]
            if value is None:
                options.pop("intra_op_num_threads", None)
            elif value != "keep":
                options["intra_op_num_threads"] = value
        (folder / "genai_config.json").write_text(json.dumps(genai, indent=2))
        model = load_model(folder)
        prefill_s, times = _timed_steps(model, text_prompt_ids(ctx), steps)
        results[label] = {"prefill_s": prefill_s, "tokens_per_s": 1.0 / statistics.median(times),
                          "intra_op_num_threads": genai["model"]["decoder"]["session_options"].get("intra_op_num_threads")}
        del model
    return {"context": ctx, "cpu_count": os.cpu_count(), "settings": results}


def vision_ours(settings: Settings) -> dict[str, Any]:
    sess = _session(settings.bundle / "vision_encoder.onnx", bundle_threads(settings, "vision"))
    patch_dim = int(sess.get_inputs()[0].shape[1]) if isinstance(sess.get_inputs()[0].shape[1], int) else 1536
    results = {}
    for image in benchmark_images(settings):
        pixels = random_pixel_values(tuple(image["grid_thw"]), patch_dim)
        grid = np.array([image["grid_thw"]], dtype=np.int64)
        feed = {"pixel_values": pixels, "image_grid_thw": grid}
        t = timed(lambda: sess.run(OG_VISION_OUTPUTS, feed), settings.repeats, warmup=1)
        t["patches"] = image["patches"]
        t["patches_per_s"] = image["patches"] / t["median_s"]
        results[image["name"]] = t
    return {"images": results}


# Vision weight formats measured next to the bundle's own: fp32 (plain sgemm), int4 MatMulNBits (smallest file),
# onnxruntime's dynamic int8 quantization with s8 and u8 per-channel weights (int8 x int8 kernels).
VISION_VARIANTS = ("fp32", "int8", "int4", "qint8", "quint8")


def vision_variants(settings: Settings) -> dict[str, Any]:
    """Export the vision encoder with other weight formats; latency, size and parity vs HF fp32 for each.

    Parity: cosine and max|diff| / max|ref| of the [merger | DeepStack] output against HF fp32 (saved by
    the vision_hf_fp32 phase on the same pixel_values), for the bundle's encoder and each variant.
    """
    import torch

    from builder_qwen3vl.vision.load import load_hf_visual
    from builder_qwen3vl.checkpoint.reader import read_checkpoint
    from builder_qwen3vl.vision.export import export_vision_encoder
    torch.set_num_threads(settings.threads)
    images = benchmark_images(settings)
    paths = {"bundle": settings.bundle / "vision_encoder.onnx"}
    export_s = {}
    visual = None
    for variant in VISION_VARIANTS:
        path = Path(settings.work) / f"vision-{variant}" / "vision_encoder.onnx"
        if not path.exists():
            visual = visual or load_hf_visual(read_checkpoint(settings.checkpoint))
            start = time.perf_counter()
            export_vision_encoder(visual, path, dtype="float32", weights=variant)
            export_s[variant] = time.perf_counter() - start
        paths[variant] = path
    del visual
    results: dict[str, Any] = {}
    for variant, path in paths.items():
        sess = _session(path, settings.threads)
        files = [path, path.with_name(path.name + ".data")]
        entry: dict[str, Any] = {"bytes": sum(f.stat().st_size for f in files if f.exists()), "images": {}}
        if variant in export_s:
            entry["export_s"] = export_s[variant]
        for image in images:
            pixels = random_pixel_values(tuple(image["grid_thw"]), 1536)
            feed = {"pixel_values": pixels, "image_grid_thw": np.array([image["grid_thw"]], dtype=np.int64)}
            out = []
            t = timed(lambda: out.__setitem__(slice(None), sess.run(OG_VISION_OUTPUTS, feed)), settings.repeats, warmup=1)
            t["patches_per_s"] = image["patches"] / t["median_s"]
            ref_path = hf_vision_output_path(settings, image["name"])
            if ref_path.exists():
                ref, got = np.load(ref_path).astype(np.float64), out[0].astype(np.float64)
                t["cosine_vs_hf_fp32"] = float((ref * got).sum() / np.sqrt((ref**2).sum() * (got**2).sum()))
                t["max_rel_diff_vs_hf_fp32"] = float(np.abs(ref - got).max() / np.abs(ref).max())
            entry["images"][image["name"]] = t
        results[variant] = entry
    return {"variants": results}


def ttft_og(settings: Settings) -> dict[str, Any]:
    """Processor + vision + embeddings + prefill + first token, through og's own API (as examples/chat.py)."""
    import onnxruntime_genai as og

    model = load_model(settings.bundle)
    tokenizer = og.Tokenizer(model)
    question = question_text(lambda s: list(tokenizer.encode(s)))
    prompt = chat_prompt(tokenizer, question, num_images=1)
    processor = model.create_multimodal_processor()
    results: dict[str, Any] = {"question": question}
    for image in benchmark_images(settings):
        first_token = []

        def once() -> None:
            inputs = processor(prompt, images=og.Images.open(image["path"]))
            token, _ = next(greedy(model, inputs, max_new_tokens=1))
            first_token.append(token)

        processor_t = timed(lambda: processor(prompt, images=og.Images.open(image["path"])), settings.repeats, warmup=1)
        inputs = processor(prompt, images=og.Images.open(image["path"]))
        ids = inputs["input_ids"].as_numpy().astype(np.int64)
        grid = inputs["image_grid_thw"].as_numpy().astype(np.int64)
        if list(grid[0]) != image["grid_thw"]:
            raise RuntimeError(f"og grid {grid.tolist()} != HF grid {image['grid_thw']} for {image['path']}")
        np.savez(Path(settings.work) / f"ttft_inputs_{image['name']}.npz", input_ids=ids, image_grid_thw=grid)
        t = timed(once, settings.repeats, warmup=1)
        t.update(prompt_tokens=int(ids.shape[-1]), first_token=first_token[-1], processor_s=processor_t["median_s"])
        results[image["name"]] = t
    return results


def _timed_steps(model: Any, ids: np.ndarray, steps: int) -> tuple[float, list[float]]:
    """og.Generator via og_run.greedy: seconds to the first token (the prefill of ``ids``), then of each step."""
    times, start = [], time.perf_counter()
    for _ in greedy(model, ids, max_new_tokens=steps + 1):
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times[0], times[1:]


def decode_og(settings: Settings) -> dict[str, Any]:
    """og runtime on our bundle: text-only prompt of ``ctx`` tokens, then time decode steps."""
    model = load_model(settings.bundle)
    results = {}
    for ctx in settings.contexts:
        prefill_s, steps = _timed_steps(model, text_prompt_ids(ctx), settings.decode_steps)
        med = statistics.median(steps)
        results[str(ctx)] = {"prefill_s": prefill_s, "step_median_s": med, "tokens_per_s": 1.0 / med, "steps": len(steps)}
    return results


class PlainDecoder:
    """One model.onnx driven the way og drives it on CPU: IO binding, one KV buffer per layer shared
    by past_key_values.* and present.* (past_present_share_buffer), GroupQueryAttention taking the
    sequence lengths from attention_mask."""

    def __init__(self, path: Path, threads: int, max_length: int, profile: str | None = None):
        import onnxruntime as ort

        self.ort = ort
        self.sess = _session(path, threads, profile)
        inputs = {i.name: i for i in self.sess.get_inputs()}
        self.width = int(inputs["inputs_embeds"].shape[-1])
        self.io_dtype = ORT_TYPES[inputs["inputs_embeds"].type]
        self.position_rank = len(inputs["position_ids"].shape)
        rng = np.random.default_rng(1)
        self.kv: dict[str, Any] = {}
        decoder_cfg = json.loads((path.parent / "genai_config.json").read_text())["model"]["decoder"]
        heads, head_dim = decoder_cfg["num_key_value_heads"], decoder_cfg["head_size"]
        for name in inputs:
            if name.startswith("past_key_values."):
                # Decode cost does not depend on the cached values: random KV instead of a prefill.
                buf = (rng.standard_normal((1, heads, max_length, head_dim)) * 0.1).astype(self.io_dtype)
                self.kv[name] = ort.OrtValue.ortvalue_from_numpy(buf)
        self.vocab = int(self.sess.get_outputs()[0].shape[-1])
        self.logits = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 1, self.vocab), dtype=self.io_dtype))
        self.embeds = (rng.standard_normal((1, 1, self.width))).astype(self.io_dtype)

    def step(self, position: int) -> None:
        binding = self.sess.io_binding()
        binding.bind_cpu_input("inputs_embeds", self.embeds)
        binding.bind_cpu_input("attention_mask", np.ones((1, position + 1), dtype=np.int64))
        pos = np.full((3, 1, 1) if self.position_rank == 3 else (1, 1), position, dtype=np.int64)
        binding.bind_cpu_input("position_ids", pos)
        for name, value in self.kv.items():
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past_key_values.", "present."), value)
        binding.bind_ortvalue_output("logits", self.logits)
        self.sess.run_with_iobinding(binding)

    def prefill(self, embeds_BSH: np.ndarray) -> None:
        """A prompt of S rows at depth 0 in one call, as og's first generate_next_token runs it."""
        tokens = embeds_BSH.shape[1]
        binding = self.sess.io_binding()
        binding.bind_cpu_input("inputs_embeds", embeds_BSH)
        binding.bind_cpu_input("attention_mask", np.ones((1, tokens), dtype=np.int64))
        pos = np.arange(tokens, dtype=np.int64)
        binding.bind_cpu_input("position_ids", np.broadcast_to(pos, (3, 1, tokens)).copy() if self.position_rank == 3 else pos[None])
        for name, value in self.kv.items():
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past_key_values.", "present."), value)
        binding.bind_output("logits")
        self.sess.run_with_iobinding(binding)

    def time_steps(self, ctx: int, steps: int) -> float:
        """Median seconds per decode step at context ``ctx`` (positions ctx .. ctx + steps - 1)."""
        self.step(ctx)  # warm-up
        times = []
        for i in range(steps):
            start = time.perf_counter()
            self.step(ctx + i)
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def decode_ort(settings: Settings, rounds: int = 5) -> dict[str, Any]:
    """Our model.onnx vs the og builder's text-only model.onnx, same loop, interleaved rounds."""
    steps = settings.decode_steps
    max_length = max(settings.contexts) + steps + 2
    models = {"ours": settings.bundle / "model.onnx", "og_text": settings.og_text / "model.onnx"}
    decoders = {name: PlainDecoder(path, settings.threads, max_length) for name, path in models.items()}
    results: dict[str, Any] = {name: {} for name in models}
    for ctx in settings.contexts:
        per_round: dict[str, list[float]] = {name: [] for name in models}
        for r in range(rounds):
            order = list(models) if r % 2 == 0 else list(reversed(models))
            for name in order:
                per_round[name].append(decoders[name].time_steps(ctx, steps))
        for name in models:
            med = statistics.median(per_round[name])
            results[name][str(ctx)] = {"step_median_s": med, "tokens_per_s": 1.0 / med, "rounds_s": per_round[name]}
    results["inputs_embeds_width"] = {name: d.width for name, d in decoders.items()}
    return results


def profile_decode(settings: Settings, ctx: int, steps: int = 16) -> dict[str, Any]:
    """onnxruntime profile of both decoders at one context: time per op type per step."""
    out = {}
    for name, path in {"ours": settings.bundle / "model.onnx", "og_text": settings.og_text / "model.onnx"}.items():
        prefix = str(Path(settings.work) / f"profile_{name}_{ctx}")
        dec = PlainDecoder(path, settings.threads, ctx + steps + 2, profile=prefix)
        dec.time_steps(ctx, steps)
        trace = dec.sess.end_profiling()
        events = json.loads(Path(trace).read_text())
        by_op: dict[str, float] = {}
        for ev in events:
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                op = ev.get("args", {}).get("op_name", "?")
                by_op[op] = by_op.get(op, 0.0) + ev["dur"] / 1e3
        out[name] = {"trace": trace, "ms_per_step_by_op": {k: v / (steps + 1) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}
    return out


def profile_vision(settings: Settings) -> dict[str, Any]:
    """onnxruntime profile of our vision encoder on the 448x448 grid: ms per op type per call."""
    image = benchmark_images(settings)[0]
    prefix = str(Path(settings.work) / "profile_vision")
    sess = _session(settings.bundle / "vision_encoder.onnx", settings.threads, profile=prefix)
    pixels = random_pixel_values(tuple(image["grid_thw"]), 1536)
    feed = {"pixel_values": pixels, "image_grid_thw": np.array([image["grid_thw"]], dtype=np.int64)}
    calls = 3
    for _ in range(calls):
        sess.run(OG_VISION_OUTPUTS, feed)
    trace = sess.end_profiling()
    by_op: dict[str, float] = {}
    for ev in json.loads(Path(trace).read_text()):
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + ev["dur"] / 1e3
    return {"image": image["name"], "trace": trace,
            "ms_per_call_by_op": {k: v / calls for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}
