"""Real removal: smaller linears, compensation biases, the config that describes the result, and its reload.

Uniform widths give a config that plain `transformers` reloads (smaller num_attention_heads / num_key_value_heads /
intermediate_size, explicit head_dim, attention_bias / mlp_bias when compensation biases exist). Per-block widths are
recorded under the config key `STRUCTURE_KEY` and reload with `load_pruned(folder)` (never remote code; the record,
its seal and the reload are in adapters/pruned_checkpoint.py, where every entry point that loads a model reads them).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..adapters.pruned_checkpoint import SEALED_MODEL_TYPE, STRUCTURE_KEY, load_pruned, seal_saved_config
from .plan import BlockShape, Kept

__all__ = [
    "SEALED_MODEL_TYPE",
    "STRUCTURE_KEY",
    "describe_structure",
    "load_pruned",
    "seal_saved_config",
    "shrink_block",
]

logger = logging.getLogger(__name__)


def _channels(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + d for h in heads for d in range(head_dim)]


def _linear(
    old: nn.Linear,
    rows: list[int] | None = None,
    cols: list[int] | None = None,
    bias: bool = False,
    extra: torch.Tensor | None = None,
) -> nn.Linear:
    """A new linear holding `old`'s kept rows / columns; a bias when `bias` or `old` has one, plus `extra`."""
    weight = old.weight.data
    if rows is not None:
        weight = weight[torch.tensor(rows, device=weight.device)]
    if cols is not None:
        weight = weight[:, torch.tensor(cols, device=weight.device)]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias or old.bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if new.bias is not None:
        value = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
        if old.bias is not None:
            value += old.bias.data.double() if rows is None else old.bias.data.double()[torch.tensor(rows)]
        if extra is not None:
            value += extra.to(value.device)
        new.bias.data.copy_(value.to(weight.dtype))
    return new


def compensation(weight: torch.Tensor, mean: torch.Tensor, removed: list[int]) -> torch.Tensor:
    """The removed input channels' mean contribution sum_{j removed} W[:, j] * mean_j, float64."""
    if not removed:
        return torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    index = torch.tensor(removed, device=weight.device)
    return weight[:, index].double() @ mean.to(weight.device)[index]


def shrink_block(
    block: nn.Module,
    shape: BlockShape,
    kept: Kept,
    means: dict[str, torch.Tensor] | None = None,
    attention_bias: bool = False,
    mlp_bias: bool = False,
) -> None:
    """Replace the block's linears by their kept parts. `means` ("self_attn.o_proj", "mlp.down_proj" input means)
    adds the compensation biases; `attention_bias` / `mlp_bias` give every linear of the module a bias (zeros where
    no compensation applies), as the family's config flags build them."""
    attn, mlp, hd = block.self_attn, block.mlp, shape.head_dim
    q_rows, kv_rows = _channels(kept.heads, hd), _channels(kept.kv_heads, hd)
    extra_o = extra_down = None
    if means is not None:
        gone = sorted(set(range(shape.heads * hd)) - set(q_rows))
        extra_o = compensation(attn.o_proj.weight.data, means["self_attn.o_proj"], gone)
        gone = sorted(set(range(shape.intermediate)) - set(kept.channels))
        extra_down = compensation(mlp.down_proj.weight.data, means["mlp.down_proj"], gone)
    attn.q_proj = _linear(attn.q_proj, rows=q_rows, bias=attention_bias)
    attn.k_proj = _linear(attn.k_proj, rows=kv_rows, bias=attention_bias)
    attn.v_proj = _linear(attn.v_proj, rows=kv_rows, bias=attention_bias)
    attn.o_proj = _linear(attn.o_proj, cols=q_rows, bias=attention_bias, extra=extra_o)
    attn.num_key_value_groups = len(kept.heads) // len(kept.kv_heads)
    mlp.gate_proj = _linear(mlp.gate_proj, rows=kept.channels, bias=mlp_bias)
    mlp.up_proj = _linear(mlp.up_proj, rows=kept.channels, bias=mlp_bias)
    mlp.down_proj = _linear(mlp.down_proj, cols=kept.channels, bias=mlp_bias, extra=extra_down)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(kept.channels)


def describe_structure(config: Any, widths: list[dict[str, int]], head_dim: int, biases: dict[str, bool]) -> bool:
    """Write the pruned widths into the transformers config; True when every block has the same widths (then plain
    transformers reloads it), False when they are recorded per block under STRUCTURE_KEY."""
    config.head_dim = head_dim
    for flag, on in biases.items():
        setattr(config, flag, bool(getattr(config, flag, False)) or on)
    uniform = all(w == widths[0] for w in widths)
    if uniform:
        for key, value in widths[0].items():
            setattr(config, key, value)
        if hasattr(config, STRUCTURE_KEY):
            delattr(config, STRUCTURE_KEY)
    else:
        setattr(config, STRUCTURE_KEY, {"version": 1, "family": config.model_type, "layers": widths})
    return uniform
