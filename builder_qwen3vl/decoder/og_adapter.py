"""What the decoder needs from og's builder and og has no hook for: each workaround, and why og needs it.

The decoder classes (model.py, moe_model.py) extend og's builder as og's own model families in
``builders/qwen.py`` do: they subclass og's classes and override og's ``make_*`` / ``load_weights`` /
``save_model`` hooks. Four needs have no hook in og; this module owns them:

- ``og_initializer``: og's ``Model.make_initializer`` both makes an initializer's tensor and registers
  it in the graph, and og has no function that only makes the tensor. The lazy reader (lazy_weights.py)
  makes the same tensor again from a re-read parameter when it is written, and the MoE class collects
  the tensors og's expert packing makes without registering them; both need og's exact conversion
  (cast through torch, Parameter wrapping, raw bytes), so this runs og's own function on a stand-in.
- ``expert_count``: og's MoE packing (``make_interleaved_swiglu_moe_preprocessing``,
  ``make_moe_expert_initializers``) takes the number of experts from ``moe_attrs["num_experts"]``, not
  from the tensors it is given. The MoE class runs it on the first expert alone to learn the names,
  dtypes and shapes of a layer's initializers before any expert is read.
- ``make_matmul_router``: the MoE router Qwen3-VL MoE needs (logits ``x @ gate.weight.T``, reshaped to
  [tokens, E]) is og's ``Qwen35MoETextModel.make_moe_router``, and og has it in no class Qwen3-VL can
  inherit from: ``Qwen35MoETextModel`` derives from ``Qwen35TextModel``, whose ``__init__`` and attention
  hooks (linear attention, gated full attention) would take precedence over the Qwen3-VL attention in
  any MRO that also holds ``Qwen3VLTextModel``. So its few lines are repeated here with og's public
  ``make_matmul`` / ``make_reshape``.
- ``wheel_commit_stamp``: og stamps model.onnx's ``producer_version`` with ``get_genai_commit()``, which runs
  ``git rev-parse HEAD`` five folders above og's own file: inside a virtualenv that is the user's checkout, so
  the same build would give different bytes in different checkouts. og calls it as
  ``Model.stamp_build_metadata(model)`` on its base class, so a subclass cannot override it; while saving, the
  base class's lookup answers with the installed wheel's own commit instead.

Each repeats or leans on a detail of og's code, so each checks that the installed og is the release it
is written against (``WRITTEN_FOR_OG``); tests/test_lazy_decoder.py and tests/test_moe_decoder.py pin
the details themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

from ..og_options import og_builder

WRITTEN_FOR_OG = "0.18.0"


@lru_cache(maxsize=1)
def require_og_written_for() -> None:
    """Refuse an og release other than the one these workarounds repeat the code of."""
    import onnxruntime_genai

    installed = getattr(onnxruntime_genai, "__version__", "unknown")
    if installed != WRITTEN_FOR_OG:
        raise RuntimeError(f"og_adapter is written for onnxruntime-genai {WRITTEN_FOR_OG}, installed is {installed}")


@lru_cache(maxsize=1)
def _og_make_initializer() -> Callable[..., None]:
    """og's ``Model.make_initializer``: the one every og class on the Qwen3-VL path inherits."""
    require_og_written_for()
    return og_builder().Model.make_initializer


def og_initializer(tensor: Any, name: str, *, to: Any = None, raw: bool = False) -> Any:
    """The tensor og's ``make_initializer`` registers for these arguments, made by og's own function and
    caught from a stand-in graph instead of being registered (it uses only ``make_value`` and ``model``)."""
    import onnx_ir as ir

    made: list[Any] = []
    stand_in = SimpleNamespace(
        make_value=lambda value_name, dtype=None, shape=None: ir.Value(name=value_name),
        model=SimpleNamespace(graph=SimpleNamespace(register_initializer=made.append)),
    )
    _og_make_initializer()(stand_in, tensor, name, to=to, raw=raw)
    return made[0].const_value


@contextlib.contextmanager
def expert_count(model: Any, count: int | None) -> Iterator[None]:
    """og's MoE packing on ``model`` handles ``count`` experts for the duration (None: all of them)."""
    require_og_written_for()
    if count is None:
        yield
        return
    num_experts = model.moe_attrs["num_experts"]
    model.moe_attrs["num_experts"] = count
    try:
        yield
    finally:
        model.moe_attrs["num_experts"] = num_experts


def router_output(layer_id: int) -> str:
    """The router logits ``make_matmul_router`` makes for layer ``layer_id`` ([tokens, E])."""
    return f"/model/layers.{layer_id}/moe/router/Reshape/output_0"


def make_matmul_router(model: Any, layer_id: int, gate: Any, root_input: str) -> str:
    """og's ``Qwen35MoETextModel.make_moe_router`` on ``model``: MatMul by the ``gate`` linear ([E, H]),
    Reshape to [tokens, E]; returns ``router_output(layer_id)``. Raw logits: the MoE / QMoE op applies
    softmax, top-k and (``normalize_routing_weights``) the renormalisation."""
    require_og_written_for()
    basename = f"/model/layers.{layer_id}/moe/router"
    matmul = model.make_matmul(gate, f"{basename}/MatMul", root_input)
    model.make_reshape(
        f"{basename}/Reshape",
        [f"{matmul}/output_0", f"/model/constants/INT64/{[-1, model.moe_attrs['num_experts']]}"],
        dtype=model.io_dtype,
        shape=model.make_moe_router_shape(),
    )
    return router_output(layer_id)


@contextlib.contextmanager
def wheel_commit_stamp() -> Iterator[None]:
    """While the block runs, og's commit lookup answers with the installed wheel's commit (``__commit__``)."""
    require_og_written_for()
    base = og_builder().Model
    original = vars(base)["get_genai_commit"]

    def wheel_commit(cls: type) -> str | None:
        import onnxruntime_genai

        return getattr(onnxruntime_genai, "__commit__", None) or None

    base.get_genai_commit = classmethod(wheel_commit)
    try:
        yield
    finally:
        base.get_genai_commit = original
