"""End-to-end parity: complete bundles run through onnxruntime-genai (og) 0.18 vs HF transformers.

HF side (independent pipeline): the checkpoint's tokenizer + chat template, HF's PIL image
processor (Qwen2VLImageProcessorPil) with the checkpoint's preprocessor_config.json, and
``Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=float32)``. og side: og.Model on
the bundle, og's own multimodal processor on the same prompt text and image files, og.Generator.
Each side is fed by its own processor; test 1 checks the two processors agree.

The checkpoint is tiny_config() with untied lm_head: with tied random embeddings greedy decoding
repeats the last prompt token forever, which would make the token comparison weak.
"""

from __future__ import annotations

import subprocess
import sys
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime_genai as og
import pytest
from PIL import Image

from builder_qwen3vl import build
from builder_qwen3vl.options import BuildOptions
from builder_qwen3vl.runtime.resize import hf_grid, resize_for_og
from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint
from builder_qwen3vl.runtime.tokens import IMAGE_TAG, IMAGE_TOKEN_ID
from compare import cosine_and_top1, load_hf_model, max_abs_diff
from e2e_helpers import (
    HfInputs,
    chat_prompt,
    hf_generate,
    hf_inputs,
    hf_prefill_logits,
    load_hf_image_processor,
    load_hf_tokenizer,
    og_generate,
    og_numpy,
    og_process,
    save_images,
    structured_image,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LOGITS_TOL = 1e-4  # fp32 bundle vs HF fp32, max|logit diff| over all prompt positions and decode steps
NEAR_TIE = 1e-4  # a greedy step whose top-2 logits are closer than this cannot be compared across runtimes
MAX_NEW_TOKENS = 20
USER_TEXT = "Describe the picture."

# (width, height) per image; seeds differ per image so two images of one size still differ.
CASES = {
    "one_image": [(300, 200)],
    "two_same_size": [(300, 200), (300, 200)],
    "two_sizes": [(300, 200), (256, 384)],
    "text_only": [],
}


# ---------------------------------------------------------------- fixtures (built once per module)

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("e2e_ckpt"), tiny_config(tie_word_embeddings=False))


def _build(ckpt: Path, folder: Path, precision: str, apply_deepstack: bool = True, **extra: str) -> Path:
    return build(BuildOptions(input=ckpt, output=folder / "bundle", precision=precision, extra_options=extra,
                              apply_deepstack=apply_deepstack))


@pytest.fixture(scope="module")
def fp32_bundle(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(ckpt, tmp_path_factory.mktemp("fp32"), "fp32")


@pytest.fixture(scope="module")
def og_fp32(fp32_bundle: Path) -> og.Model:
    """The default fp32 bundle: prefill computes the lm_head for the last position only (prune_lm_head)."""
    return og.Model(str(fp32_bundle))


@pytest.fixture(scope="module")
def og_fp32_full(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> og.Model:
    """The same bundle with logits for every prompt position (prune_lm_head=false): full-prefill parity."""
    return og.Model(str(_build(ckpt, tmp_path_factory.mktemp("fp32_full"), "fp32", prune_lm_head="false")))


@pytest.fixture(scope="module")
def hf(ckpt: Path) -> SimpleNamespace:
    return SimpleNamespace(
        model=load_hf_model(ckpt), tokenizer=load_hf_tokenizer(ckpt), image_processor=load_hf_image_processor(ckpt)
    )


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


class Case(SimpleNamespace):
    prompt: str
    images: list[Image.Image]
    paths: list[str]
    hf_inputs: HfInputs


@pytest.fixture(scope="module")
def cases(hf: SimpleNamespace, image_dir: Path) -> dict[str, Case]:
    out = {}
    for name, sizes in CASES.items():
        images = [structured_image(w, h, seed=i + 7) for i, (w, h) in enumerate(sizes)]
        prompt = chat_prompt(hf.tokenizer, len(images), USER_TEXT)
        out[name] = Case(
            prompt=prompt, images=images, paths=save_images(image_dir, images, name),
            hf_inputs=hf_inputs(hf.tokenizer, hf.image_processor, prompt, images),
        )
    return out


@pytest.fixture(scope="module")
def hf_one_image_logits(hf: SimpleNamespace, cases: dict[str, Case]) -> np.ndarray:
    return hf_prefill_logits(hf.model, cases["one_image"].hf_inputs)


def _decode_logits_diff(ref, got) -> float:
    """max|logit diff| over the greedy steps both runs share (row i chose token i)."""
    steps = min(len(ref.tokens), len(got.tokens))
    return max_abs_diff(ref.step_logits[:steps], got.step_logits[:steps])


def _comparable_rows(ref, got) -> tuple[np.ndarray, np.ndarray]:
    """The step-logit rows of both runs up to the first differing token (row i is conditioned on tokens < i)."""
    n = min(len(ref.tokens), len(got.tokens))
    same = next((i for i in range(n) if ref.tokens[i] != got.tokens[i]), n - 1) + 1
    return ref.step_logits[:same], got.step_logits[:same]


def _og_prefill_logits(model: og.Model, case: Case) -> np.ndarray:
    return og_generate(model, og_process(model, case.prompt, case.paths), max_new_tokens=1).prefill_logits


# ---------------------------------------------------------------- 1. processors

@pytest.mark.parametrize("size", [(640, 480), (300, 200), (50, 50), (300, 1000)])
def test_og_processor_matches_hf_image_processor(size, og_fp32, hf, image_dir) -> None:
    width, height = size
    img = structured_image(width, height, seed=width + height)
    [path] = save_images(image_dir, [img], f"proc_{width}x{height}")
    prompt = chat_prompt(hf.tokenizer, 1, USER_TEXT)
    ref = hf_inputs(hf.tokenizer, hf.image_processor, prompt, [img])
    got = og_numpy(og_process(og_fp32, prompt, [path]))
    np.testing.assert_array_equal(got["image_grid_thw"], ref.image_grid_thw.numpy(), err_msg=f"grid for {width}x{height}")
    assert got["pixel_values"].shape == tuple(ref.pixel_values.shape)
    diff = max_abs_diff(got["pixel_values"], ref.pixel_values.numpy())
    print(f"{width}x{height}: grid {got['image_grid_thw'].tolist()}, max|pixel_values diff| {diff:.2e}")
    # Values in [-1, 1] after (x/255 - 0.5)/0.5; both resize the same uint8 image bicubically, so only
    # float rounding separates them (measured 1.2e-7). 1e-6 would catch any resize or layout change.
    assert diff <= 1e-6
    np.testing.assert_array_equal(got["input_ids"].astype(np.int64), ref.input_ids.numpy())
    assert int(got["num_image_tokens"].sum()) == int((ref.input_ids == IMAGE_TOKEN_ID).sum())


# ---------------------------------------------------------------- 2. fp32 greedy + logits

@pytest.mark.parametrize("case_name", list(CASES))
def test_fp32_greedy_and_prefill_logits_match_hf(case_name, og_fp32_full, hf, cases) -> None:
    case = cases[case_name]
    inputs = og_process(og_fp32_full, case.prompt, case.paths)
    np.testing.assert_array_equal(og_numpy(inputs)["input_ids"].astype(np.int64), case.hf_inputs.input_ids.numpy())
    got = og_generate(og_fp32_full, inputs, MAX_NEW_TOKENS)
    ref_logits = hf_prefill_logits(hf.model, case.hf_inputs)
    ref = hf_generate(hf.model, case.hf_inputs, MAX_NEW_TOKENS)
    diff = max_abs_diff(ref_logits, got.prefill_logits)
    is_image = case.hf_inputs.input_ids[0].numpy() == IMAGE_TOKEN_ID
    image_rows = f"{max_abs_diff(ref_logits[:, is_image], got.prefill_logits[:, is_image]):.2e}" if is_image.any() else "-"
    decode_diff = _decode_logits_diff(ref, got)
    print(f"{case_name}: prompt {case.hf_inputs.input_ids.shape[1]} tokens, prefill max|logit diff| {diff:.2e} "
          f"(image rows {image_rows}; max|logit| {np.abs(ref_logits).max():.1f}), decode steps max|logit diff| "
          f"{decode_diff:.2e}, smallest HF top-2 margin {ref.min_margin:.2e}")
    assert diff <= LOGITS_TOL
    assert ref.min_margin > NEAR_TIE, f"{case_name}: HF greedy has a near-tie; choose another seed or prompt"
    assert got.tokens == ref.tokens
    assert decode_diff <= LOGITS_TOL


@pytest.mark.parametrize("case_name", list(CASES))
def test_pruned_default_greedy_matches_hf_and_full_logits(case_name, og_fp32, og_fp32_full, hf, cases) -> None:
    """The default bundle (last-position logits in prefill) decodes the same tokens as the full-logits bundle
    and as HF, and its one prefill row is the full bundle's last row."""
    case = cases[case_name]
    pruned = og_generate(og_fp32, og_process(og_fp32, case.prompt, case.paths), MAX_NEW_TOKENS)
    full = og_generate(og_fp32_full, og_process(og_fp32_full, case.prompt, case.paths), MAX_NEW_TOKENS)
    ref = hf_generate(hf.model, case.hf_inputs, MAX_NEW_TOKENS)
    prompt_len = case.hf_inputs.input_ids.shape[1]
    assert pruned.prefill_logits.shape == (1, 1, full.prefill_logits.shape[-1])
    assert full.prefill_logits.shape[1] == prompt_len
    last_row = max_abs_diff(pruned.prefill_logits[:, -1], full.prefill_logits[:, -1])
    print(f"{case_name}: pruned vs full last prefill row max|diff| {last_row:.2e}, decode {_decode_logits_diff(full, pruned):.2e}")
    assert last_row <= LOGITS_TOL  # the same MatMul on one row instead of all (measured: 0 or float rounding)
    assert pruned.tokens == full.tokens == ref.tokens
    assert _decode_logits_diff(ref, pruned) <= LOGITS_TOL


def test_written_genai_config_carries_the_run_time_defaults_and_pins(fp32_bundle, ckpt, tmp_path) -> None:
    written = json.loads((fp32_bundle / "genai_config.json").read_text())
    assert {written["model"][s]["session_options"]["intra_op_num_threads"] for s in ("decoder", "embedding", "vision")} == {0}
    assert written["search"]["max_length"] == 4096  # the tiny checkpoint's context: below the 8,192 default
    pinned = _build(ckpt, tmp_path, "fp32", intra_op_num_threads="2", max_length="1024")
    doc = json.loads((pinned / "genai_config.json").read_text())
    assert {doc["model"][s]["session_options"]["intra_op_num_threads"] for s in ("decoder", "embedding", "vision")} == {2}
    assert doc["search"]["max_length"] == 1024
    og.Model(str(pinned))  # og's parser takes them


def test_default_bundle_prunes_the_lm_head(fp32_bundle) -> None:
    """model.onnx's logits are [batch, 1, vocab] (og 0.18 reads them as trimmed prefill logits)."""
    graph = onnx.load(str(fp32_bundle / "model.onnx"), load_external_data=False).graph
    (logits,) = [o for o in graph.output if o.name == "logits"]
    dims = [d.dim_value or d.dim_param for d in logits.type.tensor_type.shape.dim]
    assert dims[1] == 1, f"logits dims {dims}: expected [batch, 1, vocab]"


# ---------------------------------------------------------------- 3. 720x1280 and the exact-grid helper

@pytest.fixture(scope="module")
def hd_image(image_dir: Path) -> tuple[Image.Image, str]:
    img = structured_image(1280, 720, seed=4)  # seed 3 has a 1.4e-4 top-2 margin: too close
    [path] = save_images(image_dir, [img], "hd_original")
    return img, path


def test_720x1280_without_pre_resize_og_grid_differs(hd_image, og_fp32, hf) -> None:
    img, path = hd_image
    prompt = chat_prompt(hf.tokenizer, 1, USER_TEXT)
    og_grid = og_numpy(og_process(og_fp32, prompt, [path]))["image_grid_thw"].tolist()
    hf_grid_thw = hf.image_processor(images=[img], return_tensors="np")["image_grid_thw"].tolist()
    print(f"720x1280 original: og grid {og_grid}, HF grid {hf_grid_thw}")
    assert hf_grid_thw == [list(hf_grid(720, 1280))] == [[1, 44, 80]]
    assert og_grid == [[1, 46, 80]]  # og's smart_resize rounds 22.5 up (and truncates on upscale)


def test_720x1280_pre_resized_matches_hf(hd_image, og_fp32_full, hf, image_dir) -> None:
    img, _ = hd_image
    resized = resize_for_og(img)
    assert resized.size == (1280, 704)
    [path] = save_images(image_dir, [resized], "hd_resized")
    prompt = chat_prompt(hf.tokenizer, 1, USER_TEXT)
    ref_inputs = hf_inputs(hf.tokenizer, hf.image_processor, prompt, [img])  # HF resizes the original itself
    inputs = og_process(og_fp32_full, prompt, [path])
    got_np = og_numpy(inputs)
    np.testing.assert_array_equal(got_np["image_grid_thw"], ref_inputs.image_grid_thw.numpy())
    np.testing.assert_array_equal(got_np["input_ids"].astype(np.int64), ref_inputs.input_ids.numpy())
    pixel_diff = max_abs_diff(got_np["pixel_values"], ref_inputs.pixel_values.numpy())
    new_tokens = 5  # prompt ~900 tokens: a short generation keeps the test fast; the logits check is full
    got = og_generate(og_fp32_full, inputs, new_tokens)
    ref_logits = hf_prefill_logits(hf.model, ref_inputs)
    ref = hf_generate(hf.model, ref_inputs, new_tokens)
    diff = max_abs_diff(ref_logits, got.prefill_logits)
    decode_diff = _decode_logits_diff(ref, got)
    print(f"720x1280 pre-resized: grid {got_np['image_grid_thw'].tolist()}, max|pixel diff| {pixel_diff:.2e}, "
          f"prefill max|logit diff| {diff:.2e} over {ref_logits.shape[1]} positions, decode {decode_diff:.2e}, "
          f"HF min margin {ref.min_margin:.2e}")
    assert pixel_diff <= 1e-6  # same PIL bicubic resize on both sides, then identical arithmetic
    assert diff <= LOGITS_TOL
    assert ref.min_margin > NEAR_TIE
    assert got.tokens == ref.tokens
    assert decode_diff <= LOGITS_TOL


# ---------------------------------------------------------------- 4. apply_deepstack=False must fail parity

def test_bundle_without_deepstack_fails_parity(ckpt, cases, hf_one_image_logits, tmp_path) -> None:
    bundle = _build(ckpt, tmp_path, "fp32", apply_deepstack=False, prune_lm_head="false")
    case = cases["one_image"]
    got = _og_prefill_logits(og.Model(str(bundle)), case)
    ids = case.hf_inputs.input_ids[0].numpy()
    first_image = int(np.argmax(ids == IMAGE_TOKEN_ID))
    before = max_abs_diff(hf_one_image_logits[:, :first_image], got[:, :first_image])
    after = max_abs_diff(hf_one_image_logits[:, first_image:], got[:, first_image:])
    print(f"apply_deepstack=False bundle vs HF: max|logit diff| {before:.2e} before the image, {after:.2f} from it on")
    assert before <= LOGITS_TOL  # the decoder is otherwise the same graph
    assert after > 0.5  # measured ~5; the fp32 bundle's 1e-4 bound is 4 orders of magnitude tighter


# ---------------------------------------------------------------- 5. int4

def test_int4_bundle_generates_and_tracks_hf(ckpt, cases, hf, tmp_path) -> None:
    bundle = _build(ckpt, tmp_path, "int4")
    # Untied checkpoint: embeddings.onnx keeps its own int4 table (tests/test_shared_table.py covers tied ones).
    locations = {e.value for t in onnx.load(str(bundle / "embeddings.onnx"), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    assert locations == {"embeddings.onnx.data"}
    vision_ops = {n.op_type for n in onnx.load(str(bundle / "vision_encoder.onnx")).graph.node}
    assert "MatMulInteger" in vision_ops and "MatMulNBits" not in vision_ops  # -p int4's vision default: qint8
    model = og.Model(str(bundle))
    case = cases["one_image"]
    got = og_generate(model, og_process(model, case.prompt, case.paths), MAX_NEW_TOKENS)
    ref = hf_generate(hf.model, case.hf_inputs, MAX_NEW_TOKENS)
    ref_rows, got_rows = _comparable_rows(ref, got)
    cos, top1 = cosine_and_top1(ref_rows, got_rows)
    same = sum(a == b for a, b in zip(got.tokens, ref.tokens))
    print(f"int4 bundle vs HF fp32, {len(ref_rows)} step-logit rows up to the first differing token: mean cosine "
          f"{cos:.4f}, top-1 agreement {top1:.3f}, max|logit diff| {max_abs_diff(ref_rows, got_rows):.2f}; "
          f"greedy tokens equal at {same}/{len(ref.tokens)} steps")
    assert len(got.tokens) == MAX_NEW_TOKENS or got.tokens[-1] in (151645, 151643)
    # Random Gaussian weights quantize badly at block size 32 (no outliers to protect, tiny rows);
    # this bound only catches a broken graph (wrong columns, no image), not quantization quality.
    assert cos > 0.8


# ---------------------------------------------------------------- 6. fp16 on the CPU

@pytest.fixture(scope="module")
def fp16_bundle(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(ckpt, tmp_path_factory.mktemp("fp16"), "fp16")


def _check_fp16_against_hf(model: og.Model, case: Case, hf, label: str) -> None:
    got = og_generate(model, og_process(model, case.prompt, case.paths), 5)
    ref = hf_generate(hf.model, case.hf_inputs, 5)
    ref_rows, got_rows = _comparable_rows(ref, got)
    cos, top1 = cosine_and_top1(ref_rows, got_rows)
    print(f"{label}: {len(ref_rows)} step-logit rows, mean cosine {cos:.5f}, top-1 {top1:.3f}, "
          f"max|logit diff| {max_abs_diff(ref_rows, got_rows):.3f}; tokens {got.tokens} vs HF {ref.tokens}")
    assert len(got.tokens) == 5
    assert cos > 0.999  # fp16 weights + activations on O(1) random weights; a broken graph gives < 0.9


def test_fp16_bundle_generates_through_og(fp16_bundle, cases, hf) -> None:
    _check_fp16_against_hf(og.Model(str(fp16_bundle)), cases["one_image"], hf, "fp16 bundle")


def test_fp16_decoder_has_no_repeat_kv_shape_labels(fp16_bundle) -> None:
    """og's fp16 CPU decoder (MultiHeadAttention + repeat_kv) mislabels the KV length of its repeat_kv
    tensors as 'sequence_length'; onnxruntime 1.31 then reuses a prefill-sized buffer at the first decode
    step. build_decoder drops those value_info entries; the test above proves generation then works."""
    model = onnx.load(str(fp16_bundle / "model.onnx"), load_external_data=False)
    assert any("/repeat_kv/" in n.name for n in model.graph.node), "og's fp16 CPU graph changed; revisit the workaround"
    assert not [v.name for v in model.graph.value_info if "/repeat_kv/" in v.name]


# ---------------------------------------------------------------- 7. upstream example flows

def test_og_model_mm_example_flow_matches_hf(fp32_bundle, hf, cases) -> None:
    """The calls og's examples/python/model-mm.py makes, in its order, for a CPU run with one image."""
    case = cases["one_image"]
    system = "You are a helpful AI assistant."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": IMAGE_TAG + USER_TEXT}]
    hf_prompt = hf.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ref_inputs = hf_inputs(hf.tokenizer, hf.image_processor, hf_prompt, case.images)
    ref = hf_generate(hf.model, ref_inputs, MAX_NEW_TOKENS)

    config = og.Config(str(fp32_bundle))
    config.clear_providers()  # model-mm.py's get_config for "-e cpu"
    config.overlay(json.dumps({"search": {}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    stream = tokenizer.create_stream()
    processor = model.create_multimodal_processor()
    params = og.GeneratorParams(model)
    # model-mm.py passes the CLI's search options; these are the greedy ones (the bundle's default samples).
    params.set_search_options(batch_size=1, do_sample=False, max_length=ref_inputs.input_ids.shape[1] + MAX_NEW_TOKENS)
    generator = og.Generator(model, params)
    prompt = tokenizer.apply_chat_template(messages=json.dumps(messages), add_generation_prompt=True)
    assert prompt == hf_prompt
    inputs = processor(prompt, images=og.Images.open(*case.paths))
    generator.set_inputs(inputs)
    tokens, pieces = [], []
    while not generator.is_done():
        generator.generate_next_token()
        new_token = generator.get_next_tokens()[0]
        tokens.append(int(new_token))
        pieces.append(stream.decode(new_token))
    print(f"model-mm.py flow: {len(tokens)} tokens, text {''.join(pieces)!r}")
    assert tokens == ref.tokens
    assert "".join(pieces) == hf.tokenizer.decode(ref.tokens)


def test_chat_example_main_smoke(fp32_bundle, hf, cases) -> None:
    """examples/chat.py end to end (its exact-grid pre-resize on: 300x200 becomes 320x224) vs HF on the original."""
    case = cases["one_image"]
    new_tokens = 6
    proc = subprocess.run([sys.executable, str(EXAMPLES / "chat.py"), "-m", str(fp32_bundle), "--image", case.paths[0],
                           "--prompt", USER_TEXT, "--max-new-tokens", str(new_tokens)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout
    ref = hf_generate(hf.model, case.hf_inputs, new_tokens)
    print(f"chat.py printed {printed!r}")
    assert printed == hf.tokenizer.decode(ref.tokens) + "\n"
