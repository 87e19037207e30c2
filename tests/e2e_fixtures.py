"""The end-to-end parity fixtures, shared by test_end_to_end.py and test_end_to_end_flows.py (a pytest plugin
named in conftest.py, so the bundles are built once per session): a tiny checkpoint with an untied lm_head
(tied random embeddings make greedy decoding repeat the last prompt token, a weak comparison), its fp32 bundles,
HF's model, tokenizer and image processor on it, and the prompt cases with their images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime_genai as og
import pytest
from PIL import Image

from builder_qwen3vl import build
from builder_qwen3vl.options import BuildOptions
from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint
from compare import load_hf_model, max_abs_diff
from e2e_helpers import (
    HfInputs,
    chat_prompt,
    hf_inputs,
    hf_prefill_logits,
    load_hf_image_processor,
    load_hf_tokenizer,
    og_generate,
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


# ---------------------------------------------------------------- fixtures (built once per test session)

@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("e2e_ckpt"), tiny_config(tie_word_embeddings=False))


def build_bundle(ckpt: Path, folder: Path, precision: str, apply_deepstack: bool = True, **extra: str) -> Path:
    return build(BuildOptions(input=ckpt, output=folder / "bundle", precision=precision, extra_options=extra,
                              apply_deepstack=apply_deepstack))


@pytest.fixture(scope="session")
def fp32_bundle(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(ckpt, tmp_path_factory.mktemp("fp32"), "fp32")


@pytest.fixture(scope="session")
def og_fp32(fp32_bundle: Path) -> og.Model:
    """The default fp32 bundle: prefill computes the lm_head for the last position only (prune_lm_head)."""
    return og.Model(str(fp32_bundle))


@pytest.fixture(scope="session")
def og_fp32_full(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> og.Model:
    """The same bundle with logits for every prompt position (prune_lm_head=false): full-prefill parity."""
    return og.Model(str(build_bundle(ckpt, tmp_path_factory.mktemp("fp32_full"), "fp32", prune_lm_head="false")))


@pytest.fixture(scope="session")
def hf(ckpt: Path) -> SimpleNamespace:
    return SimpleNamespace(
        model=load_hf_model(ckpt), tokenizer=load_hf_tokenizer(ckpt), image_processor=load_hf_image_processor(ckpt)
    )


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


class Case(SimpleNamespace):
    prompt: str
    images: list[Image.Image]
    paths: list[str]
    hf_inputs: HfInputs


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def hf_one_image_logits(hf: SimpleNamespace, cases: dict[str, Case]) -> np.ndarray:
    return hf_prefill_logits(hf.model, cases["one_image"].hf_inputs)


def decode_logits_diff(ref, got) -> float:
    """max|logit diff| over the greedy steps both runs share (row i chose token i)."""
    steps = min(len(ref.tokens), len(got.tokens))
    return max_abs_diff(ref.step_logits[:steps], got.step_logits[:steps])


def comparable_rows(ref, got) -> tuple[np.ndarray, np.ndarray]:
    """The step-logit rows of both runs up to the first differing token (row i is conditioned on tokens < i)."""
    n = min(len(ref.tokens), len(got.tokens))
    same = next((i for i in range(n) if ref.tokens[i] != got.tokens[i]), n - 1) + 1
    return ref.step_logits[:same], got.step_logits[:same]


def og_prefill_logits(model: og.Model, case: Case) -> np.ndarray:
    return og_generate(model, og_process(model, case.prompt, case.paths), max_new_tokens=1).prefill_logits
