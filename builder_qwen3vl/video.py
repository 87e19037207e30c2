"""The published import path of video support: what ``runtime/video.py`` defines."""

from .runtime.video import *  # noqa: F401,F403
from .ground.video_settings import ImageSettings, VideoSettings  # noqa: F401
