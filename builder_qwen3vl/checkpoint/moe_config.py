"""The MoE keys of a Qwen3-VL MoE text_config (``Qwen3VLMoeForConditionalGeneration``: 30B-A3B, 235B-A22B).

Both config formats name them alike, except the expert count: transformers 4.57 (the released
checkpoints) writes ``num_experts``, transformers 5.x ``num_local_experts`` (``Qwen3VLMoeTextConfig``'s
``attribute_map``). Defaults are ``Qwen3VLMoeTextConfig``'s for the optional keys; the three sizes are
required, so a config that forgot one is told so instead of silently getting HF's 60 experts.

Which layer is sparse is HF's rule (``Qwen3VLMoeTextDecoderLayer``), owned by
``moe_layout.sparse_layers``: layer i has experts iff i is not in ``mlp_only_layers`` and
(i + 1) % ``decoder_sparse_step`` == 0; the other layers are dense MLPs of ``intermediate_size``.
"""

from __future__ import annotations

from typing import Any

from ..ground.errors import InputError
from .json_files import show
from .limits import MAX_EXPERTS, MAX_LAYERS, MAX_WIDTH



def _int(d: dict[str, Any], key: str, where: str, *, default: int | None = None, aliases: tuple[str, ...] = (),
         hi: int = MAX_WIDTH) -> int:
    """An integer key (or its alias) of text_config, at most ``hi``; the lower bounds are the caller's."""
    for name in (key, *aliases):
        if name in d:
            value = d[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{where}: text_config {name} is {show(value)}, expected an integer")
            if value > hi:
                raise InputError(f"{where}: text_config {name} is {show(value)}, expected at most {hi}")
            return value
    if default is None:
        also = "".join(f" (or {a})" for a in aliases)
        raise InputError(f"{where}: a Qwen3-VL MoE text_config needs {key}{also}")
    return default


def moe_fields(d: dict[str, Any], num_hidden_layers: int, where: str) -> dict[str, Any]:
    """The MoE fields of ``TextConfig`` from a text_config dict, checked; InputError (one line) on a bad value."""
    experts = _int(d, "num_experts", where, aliases=("num_local_experts",), hi=MAX_EXPERTS)
    if experts < 1:
        raise InputError(f"{where}: text_config num_experts is {experts}, expected at least 1")
    top_k = _int(d, "num_experts_per_tok", where)
    if not 1 <= top_k <= experts:
        raise InputError(f"{where}: text_config num_experts_per_tok is {top_k}, expected 1..num_experts ({experts})")
    width = _int(d, "moe_intermediate_size", where)
    if width < 1:
        raise InputError(f"{where}: text_config moe_intermediate_size is {width}, expected at least 1")
    step = _int(d, "decoder_sparse_step", where, default=1, hi=MAX_LAYERS)
    if step < 1:
        raise InputError(f"{where}: text_config decoder_sparse_step is {step}, expected at least 1")
    only = d.get("mlp_only_layers")
    only = [] if only is None else only
    if not isinstance(only, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in only):
        raise InputError(f"{where}: text_config mlp_only_layers is {show(only)}, expected a list of layer numbers")
    outside = [i for i in only if not 0 <= i < num_hidden_layers]
    if outside:
        raise InputError(f"{where}: text_config mlp_only_layers {show(outside)} outside 0..{num_hidden_layers - 1} "
                         f"(num_hidden_layers={num_hidden_layers})")
    norm = d.get("norm_topk_prob", True)
    if not isinstance(norm, bool):
        raise InputError(f"{where}: text_config norm_topk_prob is {show(norm)}, expected true or false")
    return dict(num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=width, decoder_sparse_step=step,
                mlp_only_layers=tuple(sorted(set(only))), norm_topk_prob=norm)
