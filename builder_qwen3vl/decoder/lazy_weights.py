"""The decoder's weights read from the checkpoint one tensor at a time, never the whole HF model at once.

og's builder loads the whole HF model (``from_pretrained``, vision tower included) and its initializers keep
references to the loaded parameters until ``save_model``. Here instead:

- ``hf_skeleton`` builds the HF model class on the meta device, the way ``from_pretrained`` builds it
  (same config, dtype resolution and init context), so og walks the same module tree without any data.
- ``CheckpointParams`` reads one parameter from the safetensors files as ``from_pretrained`` would load it:
  the checkpoint key transformers' own renaming rules map to it (a tied lm_head reads the embedding table
  when the checkpoint stores no lm_head, as ``tie_weights`` does), cast to the parameter's dtype.
- ``LazyWeights.materialized`` gives one module (a decoder layer, the final norm, the lm_head) real
  parameters while og reads it; afterwards they are meta again.
- ``LazyWeights.defer`` replaces every initializer og made from such a parameter (or a view of one, e.g.
  ``weight.T``) by a ``CheckpointTensor``, which reads the parameter again when ``ir.save`` writes it and
  produces exactly the tensor og's ``make_initializer`` would have (og's own function makes it,
  ``og_adapter.og_initializer``), converting 2-D weights a block of rows at a time.

So the parameters of at most one module are resident while the graph is made, and one tensor (plus its
converted blocks) while it is saved. Anything og builds that this module cannot follow (a GGUF or
prequantized checkpoint, an adapter, og's ``num_hidden_layers``, keys transformers would rename or convert)
makes ``lazy_unsupported`` answer why, and the caller keeps og's own loader.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..checkpoint.safetensors_index import TensorInfo, read_checkpoint_tensors
from .live_tensors import LiveTensors
from .og_adapter import og_initializer

log = logging.getLogger(__name__)

# Output blocks of about this many bytes when a 2-D weight is converted (cast / transposed) for writing.
BLOCK_BYTES = 64 << 20


class LazyUnsupported(Exception):
    """The checkpoint or options need og's own loader (the message says why)."""


def lazy_unsupported(model: Any, input_path: str) -> str | None:
    """Why og's builder model ``model`` cannot read ``input_path`` lazily, or None."""
    if str(input_path).endswith(".gguf"):
        return "a GGUF file"
    if model.quant_type is not None:
        return f"a prequantized checkpoint ({model.quant_type})"
    if "adapter_path" in model.extra_options:
        return "an adapter (adapter_path)"
    if "num_hidden_layers" in model.extra_options:
        return "og's num_hidden_layers option"
    if not Path(model.model_name_or_path).is_dir():
        return f"{model.model_name_or_path} is not a local folder"
    return None


# ---------------------------------------------------------------------------------------------- the skeleton


def checkpoint_files(folder: Path) -> tuple[list[str], dict[str, Any] | None]:
    """The safetensors files and sharded metadata transformers resolves for a local checkpoint folder."""
    import json

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        files = [str(folder / f) for f in sorted(set(data["weight_map"].values()))]
        return files, dict(data.get("metadata") or {})
    single = folder / "model.safetensors"
    if single.is_file():
        return [str(single)], None
    raise LazyUnsupported(f"{folder}: no model.safetensors or model.safetensors.index.json")


def hf_skeleton(hf_class: type, folder: Path) -> Any:
    """``hf_class`` with every parameter on the meta device, as ``from_pretrained(folder)`` builds it before loading.

    Same steps as transformers 5's ``from_pretrained``: the config class reads config.json, ``_get_dtype``
    resolves ``dtype="auto"``, and the model is made under the class's own init context (which puts it on
    the meta device). A dtype plan (``_keep_in_fp32_modules``) would make parameter dtypes differ per module:
    none of the Qwen3-VL classes has one, and one would need og's loader.
    """
    from transformers.modeling_utils import _get_dtype
    from transformers.utils.generic import ContextManagers

    config = hf_class.config_class.from_pretrained(str(folder))
    files, sharded = checkpoint_files(folder)
    config, dtype = _get_dtype("auto", files, config, sharded, None, True)
    config = copy.deepcopy(config)
    with ContextManagers(hf_class.get_init_context(dtype, False, False, None, config)):
        model = hf_class(config)
    model.eval()
    if model._get_dtype_plan(dtype):
        raise LazyUnsupported(f"{hf_class.__name__} keeps some modules in float32 (a dtype plan)")
    return model


# ------------------------------------------------------------------------------------------ reading params


# Every CheckpointParams made in this process reports here (tests read it).
LIVE = LiveTensors()


class CheckpointParams:
    """Read HF parameters of ``model`` (a skeleton) from the checkpoint in ``folder`` one at a time.

    ``oriented`` maps parameters whose orientation the caller decided (Qwen3-VL MoE experts, from both
    tensors' shapes, see checkpoint/moe_layout.py) to True when the stored tensor is the parameter with axes 1 and 2
    swapped; any other parameter must be stored under the key transformers' renaming rules map to it, in
    the parameter's shape, with no conversion.
    """

    def __init__(self, folder: Path, model: Any, oriented: dict[str, bool] | None = None):
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        self.folder = folder
        self.stored = read_checkpoint_tensors(folder)
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.oriented = dict(oriented or {})
        self.transposed = {name for name, swapped in self.oriented.items() if swapped}
        mapping = get_model_conversion_mapping(model, None, None) or []
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
        meta_state = model.state_dict()
        self.sources: dict[str, TensorInfo] = {}
        self.converted: set[str] = set()
        for key in sorted(self.stored):
            renamed, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta_state)
            if renamed not in meta_state and key in meta_state:
                renamed, pattern = rename_source_key(key, [], [], model.base_model_prefix, meta_state)
            if renamed not in self.params:
                continue
            if renamed in self.sources:
                raise LazyUnsupported(f"checkpoint tensors {self.sources[renamed].name} and {key} both load into {renamed}")
            self.sources[renamed] = self.stored[key]
            if pattern is not None:
                self.converted.add(renamed)
        # tie_weights: a tied parameter the checkpoint does not store reads its partner (either direction).
        tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
        for target, source in tied.items():
            if target not in self.sources and source in self.sources:
                self.sources[target] = self.sources[source]
            elif source not in self.sources and target in self.sources:
                self.sources[source] = self.sources[target]

    def check(self, names: list[str]) -> None:
        """Refuse parameters that are not stored, or that transformers would convert in a way not reproduced here."""
        for name in names:
            if name not in self.sources:
                raise LazyUnsupported(f"the checkpoint stores no tensor for parameter {name}")
            if name in self.converted and name not in self.oriented:
                raise LazyUnsupported(f"transformers converts parameter {name} from {self.sources[name].name} on loading")
            expected = tuple(self.params[name].shape)
            stored = self.sources[name].shape
            if name in self.transposed:
                stored = (stored[0], stored[2], stored[1]) if len(stored) == 3 else stored
            if stored != expected:
                raise LazyUnsupported(f"parameter {name}: stored shape {list(stored)}, the model's {list(expected)}")

    def read(self, name: str, first: int | None = None, track: bool = True) -> Any:
        """Parameter ``name`` as from_pretrained loads it (its values, in the parameter's dtype).

        The tensor is backed by the memory-mapped file (safetensors' ``get_tensor``) when no cast is needed:
        its pages are read as they are used and go with it.

        ``first``: only that many entries along axis 0 (e.g. one MoE expert). ``track``: count the tensor in
        ``LIVE`` while it is alive (the caller counts what it wraps it in instead)."""
        from safetensors import safe_open

        info = self.sources[name]
        with safe_open(str(info.file), framework="pt") as f:
            tensor = f.get_slice(info.name)[:first] if first is not None else f.get_tensor(info.name)
        dtype = self.params[name].dtype
        if tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        if name in self.transposed:
            tensor = tensor.transpose(1, 2)  # a view: the packing that reads it copies it anyway
        if track:
            LIVE.track(name, tensor)
        return tensor


# ------------------------------------------------------------------------------------ og's initializers


def _torch_dtype(ir_dtype: Any) -> Any:
    from onnx_ir.tensor_adapters import to_torch_dtype

    return to_torch_dtype(ir_dtype)


def lazy_tensor_base() -> type:
    """onnx_ir's LazyTensor, imported when a decoder is built (the base of the initializers made on write)."""
    import onnx_ir as ir

    return ir.LazyTensor


class CheckpointTensor(lazy_tensor_base()):  # type: ignore[misc]
    """An og initializer made from a checkpoint parameter or a view of it, read again when it is written.

    ``geometry`` (size, stride, offset) is the view og passed of the contiguous parameter. The whole tensor
    (``numpy``, ``tobytes``) comes from og's own ``make_initializer`` on the re-read view; ``tofile`` writes
    the same bytes a block of rows at a time when the view is the parameter itself or its transpose (og's
    MatMul weights), so the converted copy is never whole in memory.
    """

    def __init__(self, params: CheckpointParams, param: str, geometry: tuple, is_parameter: bool, to: Any,
                 og_tensor: Any):
        self.params, self.param, self.geometry, self.is_parameter, self.to = params, param, geometry, is_parameter, to
        super().__init__(self._whole, dtype=og_tensor.dtype, shape=og_tensor.shape, name=og_tensor.name)
        size, stride, offset = geometry
        rows = params.params[param].shape
        self.layout = None
        if offset == 0 and len(size) == 2 and len(rows) == 2 and (to is not None or is_parameter):
            if tuple(size) == (rows[0], rows[1]) and tuple(stride) == (rows[1], 1):
                self.layout = "same"
            elif tuple(size) == (rows[1], rows[0]) and tuple(stride) == (1, rows[1]):
                self.layout = "transposed"

    def _view(self, fresh: Any) -> Any:
        import torch

        size, stride, offset = self.geometry
        view = fresh.as_strided(size, stride, fresh.storage_offset() + offset)
        return torch.nn.Parameter(view, requires_grad=False) if self.is_parameter else view

    def _whole(self) -> Any:
        return og_initializer(self._view(self.params.read(self.param)), self.name, to=self.to)

    def blocks(self) -> Iterator[Any]:
        """The tensor as contiguous torch blocks of whole rows, in order (layout "same" / "transposed" only)."""
        fresh = self.params.read(self.param)
        view = fresh if self.layout == "same" else fresh.T
        dtype = _torch_dtype(self.to) if self.to is not None else fresh.dtype
        row_bytes = max(1, view.shape[1] * max(fresh.element_size(), dtype.itemsize))
        step = max(1, BLOCK_BYTES // row_bytes)
        for start in range(0, view.shape[0], step):
            yield view[start:start + step].to(dtype).contiguous()

    def columns(self, start: int, stop: int, fresh: Any) -> Any:
        """Columns [start, stop) of the tensor, contiguous, as a torch tensor (layout "transposed" / "same")."""
        dtype = _torch_dtype(self.to) if self.to is not None else fresh.dtype
        part = fresh[start:stop].T if self.layout == "transposed" else fresh[:, start:stop]
        return part.to(dtype).contiguous()

    def tofile(self, file: Any) -> None:
        if self.layout is None:
            return super().tofile(file)
        from onnx_ir.tensor_adapters import TorchTensor

        for block in self.blocks():
            TorchTensor(block).tofile(file)
        return None


class LazyWeights:
    """The lazy-weights state of one og builder model: the skeleton's names, the reader, the resident module."""

    def __init__(self, skeleton: Any, params: CheckpointParams):
        self.params = params
        self.module_names = {id(m): name for name, m in skeleton.named_modules(remove_duplicate=False)}
        self.resident: dict[int, tuple[str, Any]] = {}  # storage address -> (param name, tensor) while materialized
        self.skip: Callable[[str], bool] = lambda name: False
        self.kept_bytes = 0  # initializer bytes og computed from resident parameters and that stay in memory

    @contextlib.contextmanager
    def materialized(self, module: Any) -> Iterator[None]:
        """``module``'s parameters (except the ``skip`` ones) read from the checkpoint for the duration."""
        import torch

        prefix = self.module_names[id(module)]
        saved = []
        try:
            for sub_name, sub in module.named_modules(prefix=prefix, remove_duplicate=False):
                for pname, param in list(sub._parameters.items()):
                    full = f"{sub_name}.{pname}"
                    if param is None or self.skip(full):
                        continue
                    tensor = torch.nn.Parameter(self.params.read(full, track=False), requires_grad=False)
                    LIVE.track(full, tensor)  # og's views of it (weight.T) keep this object alive
                    sub._parameters[pname] = tensor
                    saved.append((sub, pname, param))
                    self.resident[tensor.untyped_storage().data_ptr()] = (full, tensor)
            yield
        finally:
            for sub, pname, param in saved:
                sub._parameters[pname] = param
            self.resident.clear()

    def defer(self, value: Any, tensor: Any, to: Any, raw: bool) -> None:
        """Make initializer ``value`` (just registered by og from ``tensor``) read its data when it is written."""
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        entry = self.resident.get(tensor.untyped_storage().data_ptr()) if tensor.numel() else None
        if entry is not None and entry[1].dtype != tensor.dtype:
            entry = None  # a reinterpreting view (.view(dtype)): not a view as_strided can make again
        if entry is None or raw:
            if self.resident and value.const_value is not None:
                self.kept_bytes += value.const_value.nbytes
            return
        param, base = entry
        geometry = (tuple(tensor.size()), tuple(tensor.stride()), tensor.storage_offset() - base.storage_offset())
        value.const_value = CheckpointTensor(
            self.params, param, geometry, isinstance(tensor, torch.nn.Parameter), to, value.const_value
        )
