"""BuildOptions: the public, typed form of the command line.

The project's own knobs are typed fields. og builder keys keep og's spelling (``KEY=VALUE``) and pass
through in ``extra_options``, with og's deprecated ``int4_*`` aliases translated here, once. The CLI's
``--extra_options`` may also carry our own keys (as og's builder users expect); they move into the typed
fields. Each value is checked here; how values combine (precision x EP x formats) is ``plan.make_plan``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .og_options import OG_CPU_OPTION_DEFAULTS, OG_OPTION_DEFAULTS, og_extra_option_keys, translate_int4_aliases
from .ground.errors import InputError
from .ground.vocab import EMBEDDINGS_PRECISIONS, EXECUTION_PROVIDERS, PRECISIONS, VISION_WEIGHT_FORMATS

# Our own keys as --extra_options spells them: the values each accepts (None: an integer, smallest value given).
OWN_EXTRA_OPTIONS: dict[str, tuple[str, ...] | None] = {
    "vision_precision": VISION_WEIGHT_FORMATS,  # the vision tower's linear weights (docs/vision_encoder.md)
    "embeddings_precision": EMBEDDINGS_PRECISIONS,  # the embedding table
    # Run-time defaults written into genai_config.json (docs/bundle.md): intra-op threads of each of the
    # three sessions (0: onnxruntime's default, every physical core) and search.max_length.
    "intra_op_num_threads": None,
    "max_length": None,
}
_INTEGER_MINIMUM = {"intra_op_num_threads": 0, "max_length": 1}

# Keys we set ourselves; a user may not override them because the bundle contract depends on them.
RESERVED_EXTRA_OPTIONS = (
    "exclude_embeds", "config_only", "use_paged_attention", "num_hidden_layers", "adapter_path", "hf_token", "hf_remote",
    "exclude_lm_head", "include_hidden_states", "filename",
)


def known_extra_options() -> list[str]:
    return sorted((set(OWN_EXTRA_OPTIONS) | set(og_extra_option_keys())) - set(RESERVED_EXTRA_OPTIONS))


def parse_extra_options(items: list[str] | None) -> dict[str, str]:
    """Parse ``KEY=VALUE`` strings (og's spelling); reject unknown or malformed keys up front."""
    options: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):  # og accepts both "a=1 b=2" and "a=1,b=2"
            if not part:
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or not key or not value.strip():
                raise InputError(f"--extra_options: '{part}' is not KEY=VALUE")
            options[key] = value.strip()
    for key, value in options.items():
        _check_key(key, value)
    return options


def _check_key(key: str, value: Any) -> None:
    if key in RESERVED_EXTRA_OPTIONS:
        raise InputError(f"--extra_options: '{key}' is set by builder_qwen3vl and cannot be overridden")
    if key not in OWN_EXTRA_OPTIONS and key not in og_extra_option_keys():
        raise InputError(f"--extra_options: unknown key '{key}'; known keys: {', '.join(known_extra_options())}")
    allowed = OWN_EXTRA_OPTIONS.get(key)
    if allowed is not None and str(value).lower() not in allowed:
        raise InputError(f"--extra_options: {key}={value} is not one of {', '.join(allowed)}")
    if key in _INTEGER_MINIMUM:
        low = _INTEGER_MINIMUM[key]
        if not str(value).strip().isdigit() or int(value) < low:
            raise InputError(f"--extra_options: {key}={value} is not an integer >= {low}")


@dataclass
class BuildOptions:
    """Everything ``build`` needs; the CLI fills it from argv, Python callers construct it directly."""

    input: Path
    output: Path
    precision: str = "int4"
    execution_provider: str = "cpu"
    cache_dir: Path | None = None
    vision_precision: str | None = None  # None: the plan's default for -p and the graph dtype
    embeddings_precision: str | None = None  # None: follows -p
    intra_op_num_threads: int | None = None  # None: 0, every physical core
    max_length: int | None = None  # None: plan.DEFAULT_MAX_LENGTH, capped by the context length
    extra_options: dict[str, Any] = field(default_factory=dict)  # og builder keys; after init: og's spelling
    overwrite: bool = False
    verbose: bool = False
    # Testing aid, Python API only: False builds a decoder that ignores the DeepStack columns (parity must fail).
    apply_deepstack: bool = True

    def __post_init__(self) -> None:
        self.input = Path(self.input)
        self.output = Path(self.output)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        if self.precision not in PRECISIONS:
            raise InputError(f"-p/--precision: '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.execution_provider not in EXECUTION_PROVIDERS:
            raise InputError(
                f"-e/--execution_provider: '{self.execution_provider}' is not one of {', '.join(EXECUTION_PROVIDERS)}"
            )
        og_options = {}
        for key, value in self.extra_options.items():
            _check_key(key, value)
            if key in OWN_EXTRA_OPTIONS:
                self._set_own(key, value)
            else:
                og_options[key] = value
        for key in OWN_EXTRA_OPTIONS:
            if (value := getattr(self, key)) is not None:
                _check_key(key, value)
        try:
            self.extra_options = translate_int4_aliases(og_options)
        except ValueError as e:
            raise InputError(f"--extra_options: {e}") from e

    def _set_own(self, key: str, value: Any) -> None:
        typed = int(value) if key in _INTEGER_MINIMUM else str(value).lower()
        given = getattr(self, key)
        if given is not None and given != typed:
            raise InputError(f"--extra_options {key}={value}: conflicts with {key}={given} given as a BuildOptions field")
        setattr(self, key, typed)

    @property
    def og_extra_options(self) -> dict[str, Any]:
        """What the og builder receives: the user's og keys over our defaults for og's keys (CPU's included)."""
        cpu = OG_CPU_OPTION_DEFAULTS if self.execution_provider == "cpu" else {}
        return {**OG_OPTION_DEFAULTS, **cpu, **self.extra_options}
