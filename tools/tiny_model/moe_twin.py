"""An MoE twin of a trained dense Qwen3-VL: the same function, computed by the MoE architecture.

    python tools/tiny_model/moe_twin.py DEST [--checkpoint DENSE] [--num-experts 4] [--top-k 2] [--seed 0]

``write_moe_twin`` turns a dense ``Qwen3VLForConditionalGeneration`` checkpoint into a
``Qwen3VLMoeForConditionalGeneration`` one in which every decoder layer is a sparse MoE layer whose
experts are all copies of that layer's trained dense MLP, and whose router has random weights. HF's
router renormalises the top-k softmax weights to sum to 1 (``Qwen3VLMoeTextTopKRouter``), so the layer
output is sum_k w_k * MLP(x) = MLP(x): the twin computes the dense model's function up to rounding,
whichever experts the router picks. A bundle of the twin therefore has the dense model's accuracy
exactly when the router (top-k, renormalisation), the expert layout and the (Q)MoE packing are right.

Tensors, per decoder layer i (dense: ``mlp.gate_proj.weight [I, H]``, ``mlp.up_proj.weight [I, H]``,
``mlp.down_proj.weight [H, I]``), written in the layout of the released Qwen3-VL MoE checkpoints
(``checkpoint/moe_layout.py``: "released"):

- ``mlp.experts.gate_up_proj [E, H, 2I]``: per expert ``cat([gate, up], 0).T`` (HF's parameter is
  [E, 2I, H] and ``chunk(2, -1)`` of ``x @ W.T`` gives gate first, then up);
- ``mlp.experts.down_proj [E, I, H]``: per expert ``down.T`` (HF's parameter [E, H, I]);
- ``mlp.gate.weight [E, H]``: the router, ``random_tensor`` values (N(0, 1/H), seeded by name and seed).

Every other tensor is copied as it is; every other file of the folder too (tokenizer, chat template,
preprocessor / video / generation configs). config.json: the dense one with the MoE architecture and
model types and the MoE keys of the released 30B-A3B config (``num_experts``, ``num_experts_per_tok``,
``moe_intermediate_size`` = the dense ``intermediate_size``, ``decoder_sparse_step`` 1, ``mlp_only_layers``
[], ``norm_topk_prob`` true).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from builder_qwen3vl.ground.vocab import QWEN3_VL_MOE_ARCHITECTURE

MLP_NAMES = ("gate_proj", "up_proj", "down_proj")
TWIN_DEFAULTS: dict[str, int] = {"num_experts": 4, "top_k": 2, "seed": 0}  # what evaluate.py --model moe-twin writes


def twin_config(dense: dict[str, Any], num_experts: int, top_k: int) -> dict[str, Any]:
    """The dense config.json made MoE (every layer sparse, each expert as wide as the dense MLP)."""
    if dense.get("model_type") != "qwen3_vl":
        raise ValueError(f"model_type '{dense.get('model_type')}': expected a dense 'qwen3_vl' checkpoint")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k {top_k}: expected 1 <= top_k <= num_experts ({num_experts})")
    cfg = copy.deepcopy(dense)
    cfg["architectures"] = [QWEN3_VL_MOE_ARCHITECTURE]
    cfg["model_type"] = "qwen3_vl_moe"
    # transformers 5 names the MoE vision config qwen3_vl_moe_vision (4.57 wrote qwen3_vl_moe; both load).
    cfg["vision_config"]["model_type"] = "qwen3_vl_moe_vision"
    text = cfg["text_config"]
    text["model_type"] = "qwen3_vl_moe_text"
    text.update(num_experts=num_experts, num_experts_per_tok=top_k, moe_intermediate_size=text["intermediate_size"],
                decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
    return cfg


def _read_tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors files")
    tensors: dict[str, Any] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def twin_tensors(dense: dict[str, Any], num_layers: int, num_experts: int, seed: int,
                 swap_gate_up: bool = False) -> dict[str, Any]:
    """The twin's tensors from the dense ones. ``swap_gate_up`` writes [up; gate]: a wrong layout, for tests."""
    import torch

    from builder_qwen3vl.testing.random_init import random_tensor

    out = dict(dense)
    for i in range(num_layers):
        prefix = f"model.language_model.layers.{i}.mlp."
        gate, up, down = (out.pop(f"{prefix}{n}.weight") for n in MLP_NAMES)
        fused = torch.cat([up, gate] if swap_gate_up else [gate, up], 0)  # [2I, H], HF's orientation
        out[f"{prefix}experts.gate_up_proj"] = fused.T.unsqueeze(0).repeat(num_experts, 1, 1).contiguous()
        out[f"{prefix}experts.down_proj"] = down.T.unsqueeze(0).repeat(num_experts, 1, 1).contiguous()
        router = f"{prefix}gate.weight"
        out[router] = random_tensor(router, (num_experts, gate.shape[1]), seed, gate.dtype)
    return out


def write_moe_twin(dense_checkpoint: Path, dest: Path, num_experts: int = 4, top_k: int = 2, seed: int = 0,
                   *, swap_gate_up: bool = False) -> Path:
    """Write the MoE twin of ``dense_checkpoint`` into ``dest`` (created; files there are overwritten)."""
    from safetensors.torch import save_file

    dense_checkpoint, dest = Path(dense_checkpoint), Path(dest)
    dense_cfg = json.loads((dense_checkpoint / "config.json").read_text())
    cfg = twin_config(dense_cfg, num_experts, top_k)
    tensors = twin_tensors(_read_tensors(dense_checkpoint), cfg["text_config"]["num_hidden_layers"], num_experts,
                           seed, swap_gate_up)
    dest.mkdir(parents=True, exist_ok=True)
    for f in dense_checkpoint.iterdir():
        if f.is_file() and f.name != "config.json" and not f.name.startswith("model") and not f.name.endswith(".lock"):
            shutil.copyfile(f, dest / f.name)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write the MoE twin of a dense Qwen3-VL checkpoint")
    p.add_argument("dest", type=Path)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped trained model")
    p.add_argument("--num-experts", type=int, default=4)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.checkpoint is None:
        from builder_qwen3vl.shipped.assembly import shipped_checkpoint

        args.checkpoint = shipped_checkpoint()
    print(write_moe_twin(args.checkpoint, args.dest, args.num_experts, args.top_k, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
