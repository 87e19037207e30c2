"""Locating the JSON templates in ``configs/``.

In the wheel they live in the package ``builder_qwen3vl.configs`` (pyproject maps the top-level
``configs/`` folder there); in a source checkout that is not installed they are at the repo root.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATE_NAMES = ("genai_config.json", "vision_processor.json")


def templates_dir() -> Path:
    package_dir = Path(__file__).resolve().parent.parent  # builder_qwen3vl/
    for candidate in (package_dir / "configs", package_dir.parent / "configs"):
        if (candidate / TEMPLATE_NAMES[0]).is_file():
            return candidate
    raise FileNotFoundError(f"builder_qwen3vl: config templates ({TEMPLATE_NAMES[0]}) not found beside {package_dir}")


@lru_cache(maxsize=None)
def _load(name: str) -> dict[str, Any]:
    return json.loads((templates_dir() / name).read_text(encoding="utf-8"))


def load_template(name: str) -> dict[str, Any]:
    """A fresh, mutable copy of a template."""
    return copy.deepcopy(_load(name))
