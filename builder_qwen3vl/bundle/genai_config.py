"""Writers for genai_config.json and the image and video processor configs, filled from the checkpoint.

Field choices follow what og 0.18 needs (docs/bundle.md lists every field and why):
- decoder.hidden_size is the WIDE width (1 + D) * H, because og sizes the image_features and
  inputs_embeds buffers with it and DeepStack travels in the extra columns;
- image_token_id / vision_start_token_id / pad_token_id are always written: without them og
  silently falls back to 1-D positions or masks prompt tokens equal to pad id 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..ground import contract
from ..checkpoint.config import Qwen3VLConfig
from ..plan import BuildPlan
from .templates import load_template
from ..ground.video_settings import VideoSettings

def provider_options(execution_provider: str) -> list[dict[str, Any]]:
    return [] if execution_provider == "cpu" else [{execution_provider: {}}]


def make_genai_config(cfg: Qwen3VLConfig, plan: BuildPlan, og_genai: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fill the template. ``og_genai`` is the genai_config og's builder made for the decoder, if any:
    its decoder input/output names, session options and KV-buffer sharing describe the graph it
    built, so they win over ours. The plan's ``intra_op_num_threads`` goes into each of the three
    sessions (og 0.18 passes 0 on to onnxruntime: every physical core); its ``max_length`` sizes og's
    KV buffer unless a request sets its own."""
    doc = load_template("genai_config.json")
    model = doc["model"]
    model["type"] = contract.OG_MODEL_TYPE
    tok, text, vision = cfg.tokens, cfg.text, cfg.vision
    model.update(
        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.pad_token_id,
        eos_token_id=list(tok.eos_token_ids),
        pad_token_id=tok.pad_token_id,
        image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id,
        vision_start_token_id=tok.vision_start_token_id,
        context_length=text.max_position_embeddings,
        vocab_size=text.vocab_size,
    )
    providers = provider_options(plan.execution_provider)
    decoder = model["decoder"]
    og_genai = og_genai or {}
    og_decoder = og_genai.get("model", {}).get("decoder", {})
    decoder.update(
        head_size=text.head_dim,
        hidden_size=plan.stream_width,
        num_attention_heads=text.num_attention_heads,
        num_hidden_layers=text.num_hidden_layers,
        num_key_value_heads=text.num_key_value_heads,
        inputs=dict(og_decoder.get("inputs") or contract.OG_DEFAULT_NAMES["decoder"]["inputs"]),
        outputs=dict(og_decoder.get("outputs") or contract.OG_DEFAULT_NAMES["decoder"]["outputs"]),
    )
    if "session_options" in og_decoder:
        decoder["session_options"] = og_decoder["session_options"]
    decoder["session_options"]["provider_options"] = providers
    decoder["filename"] = contract.DECODER_FILENAME

    embedding = model["embedding"]
    embedding.update(
        filename=contract.EMBEDDING.filename,
        inputs=contract.config_names(contract.EMBEDDING.inputs),
        outputs=contract.config_names(contract.EMBEDDING.outputs),
    )
    embedding["session_options"]["provider_options"] = providers

    vis = model["vision"]
    vis.update(
        filename=contract.VISION.filename,
        config_filename=contract.PROCESSOR_CONFIG_FILENAME,
        spatial_merge_size=vision.spatial_merge_size,
        patch_size=vision.patch_size,
        inputs=contract.config_names(contract.VISION.inputs),
        outputs=contract.config_names(contract.VISION.outputs),
    )
    vis["session_options"]["provider_options"] = providers

    for section in (decoder, embedding, vis):
        section["session_options"]["intra_op_num_threads"] = plan.intra_op_num_threads

    gen = cfg.generation
    doc["search"].update(
        max_length=plan.max_length,
        do_sample=gen.do_sample,
        top_k=gen.top_k,
        top_p=gen.top_p,
        temperature=gen.temperature,
        repetition_penalty=gen.repetition_penalty,
    )
    if "past_present_share_buffer" in og_genai.get("search", {}):
        doc["search"]["past_present_share_buffer"] = og_genai["search"]["past_present_share_buffer"]
    return doc


def make_processor_config(cfg: Qwen3VLConfig) -> dict[str, Any]:
    doc = load_template("vision_processor.json")
    proc = cfg.processor
    attrs_by_type = {t["operation"]["type"]: t["operation"].setdefault("attrs", {}) for t in doc["processor"]["transforms"]}
    attrs_by_type["Resize"].update(
        min_pixels=proc.min_pixels, max_pixels=proc.max_pixels, patch_size=proc.patch_size, merge_size=proc.merge_size
    )
    attrs_by_type["Normalize"].update(mean=list(proc.image_mean), std=list(proc.image_std))
    attrs_by_type["PatchImage"].update(
        patch_size=proc.patch_size, temporal_patch_size=proc.temporal_patch_size, merge_size=proc.merge_size
    )
    return doc


def make_video_config(video: VideoSettings) -> dict[str, Any]:
    """The bundle's video_preprocessor_config.json: the checkpoint's video processor settings as HF resolved them
    (``Checkpoint.video``), in HF's format. og ignores the file; ``VideoSettings.from_bundle`` reads it."""
    return video.to_dict()


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=4) + "\n", encoding="utf-8")
