"""Typed, bounded reads of one config.json field: each names the file and the key in its one-line error."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..ground.errors import InputError
from .json_files import show
from .limits import MAX_WIDTH

_REQUIRED = object()


def _value(d: dict[str, Any], key: str, where: str, default: Any, none_is_default: bool) -> Any:
    if key not in d:
        if default is _REQUIRED:
            raise InputError(f"{where}: missing required field '{key}'")
        return default
    return default if d[key] is None and none_is_default else d[key]


def label(section: str, key: str) -> str:
    return f"{section} {key}" if section else key


def integer(d: dict[str, Any], key: str, where: str, section: str = "", *, lo: int = 1, hi: int = MAX_WIDTH,
            default: Any = _REQUIRED, none_is_default: bool = False) -> int:
    """``d[key]``, an integer in lo..hi (not a bool, float or string); InputError naming ``where`` and the key."""
    value = _value(d, key, where, default, none_is_default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: {label(section, key)} is {show(value)}, expected an integer")
    if not lo <= value <= hi:
        raise InputError(f"{where}: {label(section, key)} is {show(value)}, expected {lo}..{hi}")
    return value


def number(d: dict[str, Any], key: str, where: str, section: str = "", *, positive: bool = False,
           default: Any = _REQUIRED, none_is_default: bool = False) -> float:
    """``d[key]``, a finite number (>= 0, or > 0 when ``positive``); InputError naming ``where`` and the key."""
    value = _value(d, key, where, default, none_is_default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        raise InputError(f"{where}: {label(section, key)} is {show(value)}, expected a finite number "
                         f"{'> 0' if positive else '>= 0'}")
    return float(value)


def boolean(d: dict[str, Any], key: str, where: str, section: str = "", *, default: Any = _REQUIRED) -> bool:
    value = _value(d, key, where, default, False)
    if not isinstance(value, bool):
        raise InputError(f"{where}: {label(section, key)} is {show(value)}, expected true or false")
    return value


def string(d: dict[str, Any], key: str, where: str, section: str = "", *, default: Any = _REQUIRED) -> str:
    value = _value(d, key, where, default, False)
    if not isinstance(value, str):
        raise InputError(f"{where}: {label(section, key)} is {show(value)}, expected a string")
    return value


def section(d: dict[str, Any], key: str, where: str, parent: str = "") -> dict[str, Any]:
    """``d[key]`` as an object ({} when absent or null)."""
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{where}: {label(parent, key)} is {show(value)}, expected an object")
    return value


def int_list(value: Any, label: str, where: str, *, lo: int, hi: int, max_len: int) -> tuple[int, ...]:
    """A JSON list of at most ``max_len`` integers in lo..hi."""
    if (not isinstance(value, (list, tuple)) or len(value) > max_len
            or any(isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi for v in value)):
        raise InputError(f"{where}: {label} is {show(value)}, expected a list of at most {max_len} integers in {lo}..{hi}")
    return tuple(value)


def sibling(where: str, name: str) -> str:
    """The name of file ``name`` beside ``where`` (the config.json messages name), for messages."""
    return str(Path(where).with_name(name)) if where.endswith(".json") else name
