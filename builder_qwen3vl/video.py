"""``builder_qwen3vl.video`` is where video support was first published; it lives in ``runtime/video.py`` now."""

from .runtime.video import *  # noqa: F401,F403
from .runtime.video_settings import ImageSettings, VideoSettings  # noqa: F401
