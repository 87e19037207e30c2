"""Qwen3-VL's special tokens and the image placeholder in prompts: facts of the released vocabulary."""

from __future__ import annotations

IMAGE_PAD = "<|image_pad|>"
# One per image in a prompt: og's processor (and HF's) expands the pad to t*h*w/4 copies.
IMAGE_TAG = "<|vision_start|>" + IMAGE_PAD + "<|vision_end|>"
ENDOFTEXT_ID = 151643  # <|endoftext|>: also the pad token of the released generation_config
IM_END_ID = 151645  # <|im_end|>: the end of an assistant turn
VISION_START_ID = 151652
VISION_END_ID = 151653
IMAGE_TOKEN_ID = 151655  # <|image_pad|>
VIDEO_TOKEN_ID = 151656  # <|video_pad|>
EOS_IDS = (IM_END_ID, ENDOFTEXT_ID)  # the released generation_config's eos_token_id list
