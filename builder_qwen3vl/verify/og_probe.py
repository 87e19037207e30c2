"""verify's run check: a child process loads the bundle with onnxruntime-genai and generates greedily
for a generated test image and for text only; an abort inside og is then a report, not a crash."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .static_checks import GENAI_CONFIG

if TYPE_CHECKING:
    from .report import VerifyReport

_RESULT_TAG = "VERIFY_RESULT "
_STAGE_TAG = "VERIFY_STAGE "
_MAX_ERROR = 300  # characters of og's error kept in the one-line reason (onnxruntime's can run to 600+)
TEST_IMAGE_SIDE = 256  # 256 x 256 = Qwen3-VL's min_pixels: no resize, grid [1, 16, 16], 64 image tokens


def run_check(bundle: Path, report: VerifyReport, facts: dict[str, Any], max_new_tokens: int, timeout: float) -> None:
    cmd = [sys.executable, "-c", "from builder_qwen3vl.verify.og_probe import probe_main; probe_main()", str(bundle.resolve()), str(max_new_tokens)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        report.failures.append(f"run: og generation did not finish in {timeout:.0f} s")
        return
    result, stage = None, "starting"
    for line in proc.stdout.splitlines():
        if line.startswith(_STAGE_TAG):
            stage = line[len(_STAGE_TAG):]
        elif line.startswith(_RESULT_TAG):
            result = json.loads(line[len(_RESULT_TAG):])
    if result is None:
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        report.failures.append(f"run: og crashed ({how}) while {stage}: {tail[0].strip()}{_fp16_cpu_hint(facts)}")
        return
    if not result["ok"]:
        error = result["error"] if len(result["error"]) <= _MAX_ERROR else result["error"][:_MAX_ERROR] + " ..."
        report.failures.append(f"run: og failed while {result['stage']}: {error}{_fp16_cpu_hint(facts)}")
        return
    for case in ("image", "text"):
        r = result[case]
        extra = f", {r['image_tokens']} image tokens" if case == "image" else ""
        report.passed.append(
            f"run ({case}): {r['prompt_tokens']} prompt tokens{extra}, generated {r['tokens']} = {r['text']!r}, logits finite"
        )


def _fp16_cpu_hint(facts: dict[str, Any]) -> str:
    if facts.get("io_dtype") == "float16" and "cpu" in facts.get("provider", []):
        return (" [an fp16 decoder on the CPU: if the error is 'Shape mismatch attempting to re-use buffer', the bundle "
                "was built without builder_qwen3vl's repeat_kv fix (docs/errors.md); rebuild it, or use -p fp32 / int4]")
    return ""


def probe_main() -> None:
    """Child process entry: ``argv = [bundle, max_new_tokens]``; prints stage lines and one result line."""
    bundle, max_new_tokens = sys.argv[1], int(sys.argv[2])
    stage = "importing onnxruntime_genai"
    try:
        def at(name: str) -> None:
            nonlocal stage
            stage = name
            print(_STAGE_TAG + name, flush=True)

        result = _probe(bundle, max_new_tokens, at)
    except Exception as e:  # reported to the parent as data: any og failure is the answer we want
        result = {"ok": False, "stage": stage, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
    print(_RESULT_TAG + json.dumps(result), flush=True)


def _probe(bundle: str, max_new_tokens: int, at: Any) -> dict[str, Any]:
    import numpy as np

    at("importing onnxruntime_genai")
    import onnxruntime_genai as og

    at("loading the bundle with og.Model")
    model = og.Model(bundle)
    tokenizer = og.Tokenizer(model)
    processor = model.create_multimodal_processor()
    image_token = int(json.loads((Path(bundle) / GENAI_CONFIG).read_text())["model"]["image_token_id"])
    result: dict[str, Any] = {"ok": True}
    with tempfile.TemporaryDirectory() as tmp:
        image_path = _write_test_image(Path(tmp) / "verify.png")
        for case, images in (("image", [image_path]), ("text", [])):
            at(f"generating ({case})")
            result[case] = _generate(og, model, tokenizer, processor, images, max_new_tokens, image_token, np,
                                     _expected_image_tokens(bundle))
    return result


def _write_test_image(path: Path) -> str:
    """A deterministic colour gradient with a square: enough structure for the vision tower to see."""
    import numpy as np
    from PIL import Image

    side = TEST_IMAGE_SIDE
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side)), np.full((side, side), 96.0)], axis=-1)
    rgb[side // 4: side // 2, side // 4: side // 2] = (255, 255, 255)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path)
    return str(path)


def _expected_image_tokens(bundle: str) -> int:
    """HF's token count for the test image under the bundle's processor settings (64 for the released ones)."""
    from ..runtime.og_run import resize_settings
    from ..runtime.resize import hf_grid

    settings = resize_settings(bundle)
    _, h, w = hf_grid(TEST_IMAGE_SIDE, TEST_IMAGE_SIDE, **settings)
    return h * w // settings["merge_size"] ** 2


def _generate(og: Any, model: Any, tokenizer: Any, processor: Any, images: list[str], max_new_tokens: int,
              image_token: int, np: Any, expected_image_tokens: int) -> dict[str, Any]:
    from ..runtime.og_run import chat_prompt, greedy

    text = chat_prompt(tokenizer, "What is in the picture?" if images else "Say hello.", len(images))
    inputs = processor(text, images=og.Images.open(*images) if images else None)
    input_ids = inputs["input_ids"].as_numpy()
    tokens: list[int] = []
    for token, logits in greedy(model, inputs, max_new_tokens, keep_logits=True):
        if not tokens and not np.isfinite(logits).all():
            raise RuntimeError(f"logits of the first step are not finite ({int((~np.isfinite(logits)).sum())} of {logits.size})")
        tokens.append(token)
    image_tokens = int((input_ids == image_token).sum())
    if images:
        if image_tokens != expected_image_tokens:
            raise RuntimeError(f"the processor expanded the test image to {image_tokens} image tokens, expected {expected_image_tokens}")
    return {"prompt_tokens": int(input_ids.shape[-1]), "image_tokens": image_tokens, "tokens": tokens,
            "text": tokenizer.decode(np.array(tokens, dtype=np.int32))}
