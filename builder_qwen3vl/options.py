"""BuildOptions: the public, typed form of the command line.

``--extra_options`` keep og's builder spelling (``KEY=VALUE``); keys the og builder knows pass
through to it, keys listed in ``OWN_EXTRA_OPTIONS`` are ours, anything else is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .decoder.og_builder import OG_OPTION_DEFAULTS
from .errors import InputError

PRECISIONS = ("fp32", "fp16", "int4")
EXECUTION_PROVIDERS = ("cpu", "cuda", "dml", "webgpu")

# Our own keys, with the values each accepts (None: free-form).
OWN_EXTRA_OPTIONS: dict[str, tuple[str, ...] | None] = {
    # Precision of the vision tower's linear weights; default depends on -p (see docs/vision_encoder.md).
    "vision_precision": ("fp32", "fp16", "int8", "int4", "qint8", "quint8"),
    # Precision of the embedding table; default follows -p.
    "embeddings_precision": ("fp32", "fp16", "int4"),
    # Run-time defaults written into genai_config.json (docs/bundle.md): intra-op threads of each of the
    # three sessions (0: onnxruntime's default, every physical core) and search.max_length.
    "intra_op_num_threads": None,
    "max_length": None,
}
# og's own default gives each session hardware_concurrency()/2 threads: one on a 2-core VM without SMT.
DEFAULT_INTRA_OP_NUM_THREADS = 0
# onnxruntime's dynamic quantization (vision weights): fp32 graphs and CPU kernels only.
DYNAMIC_VISION_WEIGHTS = ("qint8", "quint8")
_INTEGER_OPTIONS = {"intra_op_num_threads": 0, "max_length": 1}  # key: smallest value allowed

# Keys we set ourselves; a user may not override them because the bundle contract depends on them.
RESERVED_EXTRA_OPTIONS = (
    "exclude_embeds", "config_only", "use_paged_attention", "num_hidden_layers", "adapter_path", "hf_token", "hf_remote",
    "exclude_lm_head", "include_hidden_states", "filename",
)


def og_extra_options() -> tuple[str, ...]:
    """The installed og builder's own keys (read from its source; imports og lazily)."""
    from .decoder.og_builder import og_extra_option_keys

    return og_extra_option_keys()


def known_extra_options() -> list[str]:
    return sorted((set(OWN_EXTRA_OPTIONS) | set(og_extra_options())) - set(RESERVED_EXTRA_OPTIONS))


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
    validate_extra_options(options)
    return options


def validate_extra_options(options: dict[str, Any]) -> None:
    if not options:
        return
    known = set(known_extra_options())
    for key, value in options.items():
        if key in RESERVED_EXTRA_OPTIONS:
            raise InputError(f"--extra_options: '{key}' is set by builder_qwen3vl and cannot be overridden")
        if key not in known:
            raise InputError(f"--extra_options: unknown key '{key}'; known keys: {', '.join(known_extra_options())}")
        allowed = OWN_EXTRA_OPTIONS.get(key)
        if allowed is not None and str(value).lower() not in allowed:
            raise InputError(f"--extra_options: {key}={value} is not one of {', '.join(allowed)}")
        if key in _INTEGER_OPTIONS:
            low = _INTEGER_OPTIONS[key]
            if not str(value).strip().isdigit() or int(value) < low:
                raise InputError(f"--extra_options: {key}={value} is not an integer >= {low}")


def validate_combination(precision: str, execution_provider: str, extra_options: dict[str, Any]) -> None:
    """Reject precision / EP / extra-option combinations the bundle cannot honour, before any work starts.

    og's builder accepts every -p fp32|fp16|int4 x -e cpu|cuda|dml|webgpu pair; what we cannot serve is a
    bfloat16 decoder io (og's rule, e.g. use_cuda_bf16) and dynamic int8 vision weights in a float16 bundle.
    """
    from .decoder.og_builder import og_io_dtype, translate_int4_aliases

    try:
        og_options = translate_int4_aliases({k: v for k, v in extra_options.items() if k not in OWN_EXTRA_OPTIONS})
    except ValueError as e:
        raise InputError(f"--extra_options: {e}") from e
    try:
        io_dtype = og_io_dtype(precision, execution_provider, og_options)
    except ValueError as e:  # og's normalize_bool on e.g. use_cuda_bf16=maybe
        raise InputError(f"--extra_options: {e}") from e
    if io_dtype == "bfloat16":
        given = " ".join(f"{k}={v}" for k, v in extra_options.items() if "bf16" in k) or f"-p {precision}"
        raise InputError(
            f"--extra_options {given}: bfloat16 inputs/outputs are not supported "
            "(embeddings.onnx and vision_encoder.onnx are float32 or float16); expected use_cuda_bf16=false"
        )
    vision = str(extra_options.get("vision_precision", "")).lower()
    if io_dtype == "float16" and vision in DYNAMIC_VISION_WEIGHTS:
        raise InputError(f"--extra_options vision_precision={vision}: needs a float32 bundle (-p fp32, or -p int4 -e cpu); "
                         f"-p {precision} -e {execution_provider} gives float16")


@dataclass
class BuildOptions:
    """Everything ``build`` needs; the CLI fills it from argv, Python callers construct it directly."""

    input: Path
    output: Path
    precision: str = "int4"
    execution_provider: str = "cpu"
    cache_dir: Path | None = None
    extra_options: dict[str, str] = field(default_factory=dict)
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
        validate_extra_options(self.extra_options)
        validate_combination(self.precision, self.execution_provider, self.extra_options)

    def own_option(self, key: str, default: str) -> str:
        return str(self.extra_options.get(key, default)).lower()

    @property
    def og_extra_options(self) -> dict[str, str]:
        """The extra options that pass through to the og builder, over our defaults for og's keys."""
        given = {k: v for k, v in self.extra_options.items() if k not in OWN_EXTRA_OPTIONS}
        return {**OG_OPTION_DEFAULTS, **given}
