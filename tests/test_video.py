"""Video through og's image path: greedy tokens equal to HF generate fed the video as HF's model takes it.

HF side: the chat template's video tag, expanded by HF's own ``Qwen3VLProcessor.replace_video_token``
(timestamps and per-frame tags) and tokenized by HF's tokenizer; ``pixel_values_videos`` /
``video_grid_thw`` [[T, h, w]] into ``Qwen3VLForConditionalGeneration.generate`` (its own video path: one
vision call over the T temporal patches, video M-RoPE, ``mm_token_type_ids`` 2). og side: the same frames
as T images through ``builder_qwen3vl.runtime.video.og_inputs`` into og.Generator.

The pixels both sides get are builder_qwen3vl.runtime.video's (HF's video processor needs torchvision, which has
no CPU build for this torch here); frame sampling and prompt text are compared with HF's code below, grids in
test_video_settings.py. Videos use the bundle's settings (the checkpoint's released video_preprocessor_config.json),
and a second checkpoint has spatial_merge_size 1 (transformers' own Qwen3-VL test config: a token per patch).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime_genai as og
import pytest
import torch
from PIL import Image, ImageDraw
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from builder_qwen3vl import build
from builder_qwen3vl.checkpoint.reader import read_checkpoint
from builder_qwen3vl.runtime.og_run import chat_prompt, greedy, load_model
from builder_qwen3vl.options import BuildOptions
from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint
from builder_qwen3vl.ground.tokens import IMAGE_TOKEN_ID
from builder_qwen3vl.runtime.video import (VIDEO_PAD, ImageSettings, VideoSettings, expand_prompt, og_inputs,
                                  preprocess_image, preprocess_video, sample_indices)
from compare import load_hf_model
from e2e_helpers import load_hf_tokenizer

VIDEO_TOKEN_ID = 151656
MAX_NEW_TOKENS = 10
QUESTION = "What happens in the video?"


def moving_square(n: int, width: int, height: int, seed: int) -> list[Image.Image]:
    """``n`` frames of a square crossing a gradient: consecutive frames differ, as in a real clip."""
    rng = np.random.default_rng(seed)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    ramp = np.linspace(40, 200, width, dtype=np.float32)
    frames = []
    for i in range(n):
        base = np.stack([np.tile(ramp, (height, 1)), np.full((height, width), 30.0 + 20 * i), np.tile(ramp[::-1], (height, 1))], -1)
        img = Image.fromarray(base.astype(np.uint8), "RGB")
        side = min(width, height) // 3
        x = int((width - side) * i / max(1, n - 1))
        ImageDraw.Draw(img).rectangle((x, height // 3, x + side, height // 3 + side), fill=colour)
        frames.append(img)
    return frames


def _setup(tmp_path_factory: pytest.TempPathFactory, name: str, **config) -> SimpleNamespace:
    ckpt = write_checkpoint(tmp_path_factory.mktemp(f"{name}_ckpt"), tiny_config(tie_word_embeddings=False, **config))
    bundle = build(BuildOptions(input=ckpt, output=tmp_path_factory.mktemp(name) / "bundle", precision="fp32"))
    video = VideoSettings.from_bundle(bundle)
    assert video == read_checkpoint(ckpt).video  # the checkpoint's settings, carried into the bundle
    return SimpleNamespace(hf=load_hf_model(ckpt), tokenizer=load_hf_tokenizer(ckpt), model=load_model(bundle), bundle=bundle,
                           video=video, image=ImageSettings.from_bundle(bundle))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return _setup(tmp_path_factory, "video")


@pytest.fixture(scope="module")
def setup_merge_1(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return _setup(tmp_path_factory, "video_merge_1", spatial_merge_size=1)


def _hf_replacement(video, fps: float, indices: np.ndarray, temporal_patch_size: int = 2) -> str:
    """HF's own text for one video's <|video_pad|>: Qwen3VLProcessor.replace_video_token."""
    processor_like = SimpleNamespace(
        video_processor=SimpleNamespace(merge_size=video.merge_size, temporal_patch_size=temporal_patch_size), video_token=VIDEO_PAD,
        vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
        _calculate_timestamps=lambda *a: Qwen3VLProcessor._calculate_timestamps(None, *a))
    inputs = {"video_grid_thw": torch.tensor([video.grid_thw]),
              "video_metadata": [SimpleNamespace(fps=fps, frames_indices=indices.tolist())]}
    return Qwen3VLProcessor.replace_video_token(processor_like, inputs, 0)


def _templated(tokenizer, content: list[dict]) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


CASES = {  # name: (frames, width, height, source fps), with the bundle's (released) video settings
    "2_frames": (2, 96, 64, 2.0),
    "8_frames": (8, 96, 64, 2.0),
    "5_frames_odd": (5, 64, 96, 2.0),
    "8_frames_large": (8, 160, 128, 4.0),  # sampling keeps 4 of 8 (2 per second of a 2-second clip)
    # over transformers' class-default budget (768·32·32 pixels per clip), inside the released one: full size
    "8_frames_over_default_budget": (8, 448, 256, 2.0),
}


def _hf_tokens(setup, ids, video=None, image=None) -> list[int]:
    kwargs = {}
    if video is not None:
        kwargs.update(pixel_values_videos=torch.from_numpy(video.pixel_values), video_grid_thw=torch.tensor([video.grid_thw]))
    if image is not None:
        kwargs.update(pixel_values=torch.from_numpy(image.pixel_values), image_grid_thw=torch.tensor([image.grid_thw]))
    types = (ids == VIDEO_TOKEN_ID).to(torch.int32) * 2 + (ids == IMAGE_TOKEN_ID).to(torch.int32)
    with torch.no_grad():
        out = setup.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types,
                                max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def _og_tokens(setup, og_text: str, visuals, hf_ids) -> list[int]:
    tokenizer = og.Tokenizer(setup.model)
    inputs = og_inputs(og, tokenizer, og_text, visuals)
    # og gets HF's token ids with <|image_pad|> where HF has <|video_pad|> (features replace both).
    np.testing.assert_array_equal(inputs["input_ids"].as_numpy()[0], np.where(hf_ids[0] == VIDEO_TOKEN_ID, IMAGE_TOKEN_ID, hf_ids[0]))
    return [t for t, _ in greedy(setup.model, inputs, MAX_NEW_TOKENS)]


def _check_video(setup: SimpleNamespace, case: str, frames: list[Image.Image], fps: float, settings: VideoSettings) -> None:
    video = preprocess_video(frames, fps, settings)
    indices = sample_indices(len(frames), fps, settings)
    content = [{"type": "video"}, {"type": "text", "text": QUESTION}]
    hf_text = _templated(setup.tokenizer, content).replace(VIDEO_PAD, _hf_replacement(video, fps, indices))
    ids = setup.tokenizer(hf_text, add_special_tokens=False, return_tensors="pt").input_ids
    assert int((ids == VIDEO_TOKEN_ID).sum()) == video.grid_thw[0] * video.grid_thw[1] * video.grid_thw[2] // settings.merge_size**2
    hf_tokens = _hf_tokens(setup, ids, video=video)
    og_text = expand_prompt(chat_prompt(og.Tokenizer(setup.model), QUESTION, num_videos=1), [video])
    og_tokens = _og_tokens(setup, og_text, [video], ids)
    print(f"{case}: grid {video.grid_thw}, timestamps {video.timestamps}, {ids.shape[1]} prompt tokens; og {og_tokens} / HF {hf_tokens}")
    assert og_tokens == hf_tokens


@pytest.mark.parametrize("case", list(CASES))
def test_video_greedy_matches_hf(setup: SimpleNamespace, case: str) -> None:
    n, width, height, fps = CASES[case]
    _check_video(setup, case, moving_square(n, width, height, seed=n + width), fps, setup.video)


def test_video_greedy_matches_hf_class_defaults(setup: SimpleNamespace) -> None:
    """transformers' class-default settings (a bundle built before the video file, or a checkpoint without one)."""
    frames = moving_square(8, 448, 256, seed=4)
    assert preprocess_video(frames, 2.0, VideoSettings()).grid_thw != preprocess_video(frames, 2.0, setup.video).grid_thw
    _check_video(setup, "class_defaults", frames, 2.0, VideoSettings())


@pytest.mark.parametrize("case", ["8_frames", "5_frames_odd"])
def test_video_greedy_matches_hf_merge_size_1(setup_merge_1: SimpleNamespace, case: str) -> None:
    """spatial_merge_size 1: every patch a token (no 2x2 merge anywhere: encoder, token counts, og positions)."""
    n, width, height, fps = CASES[case]
    assert setup_merge_1.video.merge_size == 1 and setup_merge_1.video.max_pixels == 25165824
    _check_video(setup_merge_1, f"merge_1_{case}", moving_square(n, width, height, seed=n + width), fps, setup_merge_1.video)


def test_video_then_image_matches_hf(setup: SimpleNamespace) -> None:
    """A video and an image in one prompt (HF allows it): video frames and the image through og's image path."""
    fps = 2.0
    video = preprocess_video(moving_square(6, 96, 64, seed=3), fps, setup.video)
    picture = moving_square(1, 120, 90, seed=9)[0]
    image = preprocess_image(picture, setup.image)
    content = [{"type": "video"}, {"type": "image"}, {"type": "text", "text": QUESTION}]
    templated = _templated(setup.tokenizer, content)
    hf_text = templated.replace(VIDEO_PAD, _hf_replacement(video, fps, sample_indices(6, fps, setup.video)))
    hf_text = hf_text.replace("<|image_pad|>", "<|image_pad|>" * image.tokens_per_frame)
    ids = setup.tokenizer(hf_text, add_special_tokens=False, return_tensors="pt").input_ids
    hf_tokens = _hf_tokens(setup, ids, video=video, image=image)
    og_text = expand_prompt(chat_prompt(og.Tokenizer(setup.model), QUESTION, 1, num_videos=1),
                            [video, image])
    og_tokens = _og_tokens(setup, og_text, [video, image], ids)
    print(f"video {video.grid_thw} + image {image.grid_thw}: og {og_tokens} / HF {hf_tokens}")
    assert og_tokens == hf_tokens


def test_sampling_follows_hf() -> None:
    """builder_qwen3vl.runtime.video.sample_indices against HF's Qwen3VLVideoProcessor.sample_frames (pure numpy there)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    for total, fps in ((2, 2.0), (5, 2.0), (8, 4.0), (300, 30.0), (10000, 25.0)):
        meta = SimpleNamespace(total_num_frames=total, fps=fps)
        ref = Qwen3VLVideoProcessor.sample_frames(SimpleNamespace(fps=2, min_frames=4, max_frames=768), meta)
        np.testing.assert_array_equal(sample_indices(total, fps), ref, err_msg=f"{total} frames at {fps} fps")


def test_chat_example_video_folder(setup: SimpleNamespace, tmp_path) -> None:
    """examples/chat.py --video on a folder of drawn frames: exit 0, and the answer HF gives for that video."""
    import subprocess
    import sys
    from pathlib import Path

    fps, frames = 2.0, moving_square(6, 96, 64, seed=21)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        frame.save(folder / f"{i:04d}.png")
    video = preprocess_video(frames, fps, setup.video)  # the settings chat.py reads from the bundle
    hf_text = _templated(setup.tokenizer, [{"type": "video"}, {"type": "text", "text": QUESTION}])
    hf_text = hf_text.replace(VIDEO_PAD, _hf_replacement(video, fps, sample_indices(len(frames), fps, setup.video)))
    ids = setup.tokenizer(hf_text, add_special_tokens=False, return_tensors="pt").input_ids
    # HF's tokens as chat.py prints tokens: og's stream decoder, which holds back bytes of an unfinished character
    # (HF's decode shows them as U+FFFD), so the text compares the tokens exactly.
    stream = og.Tokenizer(setup.model).create_stream()
    expected = "".join(stream.decode(t) for t in _hf_tokens(setup, ids, video=video))
    chat = Path(__file__).resolve().parents[1] / "examples" / "chat.py"
    proc = subprocess.run([sys.executable, str(chat), "-m", str(setup.bundle), "--video", str(folder), "--fps", str(fps),
                           "--prompt", QUESTION, "--max-new-tokens", str(MAX_NEW_TOKENS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    print(f"chat.py --video printed {proc.stdout!r}; HF {expected!r}")
    assert proc.stdout == expected + "\n"
    no_fps = subprocess.run([sys.executable, str(chat), "-m", str(setup.bundle), "--video", str(folder)], capture_output=True, text=True)
    assert no_fps.returncode == 2 and no_fps.stderr.strip().endswith("needs --fps (frames per second of the source)")


def test_read_frames_from_a_video_file(tmp_path) -> None:
    """A drawn clip written as MPEG-4 with PyAV and read back: every frame, the stream's rate, sampled as HF would."""
    av = pytest.importorskip("av")
    from builder_qwen3vl.runtime.video import read_frames

    frames, fps = moving_square(10, 96, 64, seed=5), 5
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    got, rate = read_frames(path)
    assert (len(got), rate, got[0].size) == (10, 5.0, (96, 64))
    # Lossy codec. Measured mean |diff| of frame 4 to its drawn frame: 4.6 (all frames 2.5-6.3); to another frame
    # (8): 34.9. The bound 12 separates "this frame, decoded" from "a wrong frame".
    assert np.abs(np.asarray(got[4], np.float32) - np.asarray(frames[4], np.float32)).mean() < 12
    video = preprocess_video(got, rate)
    assert video.grid_thw[0] == 2 and len(video.timestamps) == 2  # 2 s of video at 2 frames/s: 4 frames, 2 patches
