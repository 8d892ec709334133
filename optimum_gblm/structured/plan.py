"""What a structured prune removes: the removable units of each block, their cost in parameters, the checks that
run before any heavy work, and the selection of units from scores (adaptive or uniform). Pure tensor code.

Units (docs/structured.md#units): an attention unit is a whole key/value group with its query heads ("group"), or,
with `attention_unit="head"`, the r-th least important query head of every group ("head": every group keeps the same
number of query heads, so `num_key_value_groups` stays an integer); an MLP unit is one intermediate channel (a row of
gate_proj and up_proj and a column of down_proj). Every block keeps at least one attention unit and
`ceil(min_mlp_keep * intermediate)` MLP channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..adapters.decoder import LLAMA_LINEARS

LINEARS = LLAMA_LINEARS  # the seven projections of a LLaMA-layout block, which structured removal reshapes
# Families whose config has both bias flags (attention_bias for q/k/v/o, mlp_bias for gate/up/down), so that a
# compensated checkpoint reloads with plain transformers, and whose attention reshapes with -1 heads.
FAMILIES = ("llama",)


@dataclass
class BlockShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads

    @property
    def params(self) -> int:
        attention = 2 * self.hidden * self.head_dim * (self.heads + self.kv_heads)
        return attention + 3 * self.hidden * self.intermediate

    def units(self, attention_unit: str) -> int:
        return self.kv_heads if attention_unit == "group" else self.group_size

    def unit_cost(self, attention_unit: str) -> int:
        """Parameters of one attention unit: query rows + o_proj columns (+ the key / value rows of a group)."""
        if attention_unit == "group":
            return 2 * self.hidden * self.head_dim * (self.group_size + 1)
        return 2 * self.hidden * self.head_dim * self.kv_heads

    @property
    def channel_cost(self) -> int:
        return 3 * self.hidden


@dataclass
class Kept:
    """The heads, key/value heads and MLP channels one block keeps (sorted original indices)."""

    heads: list[int]
    kv_heads: list[int]
    channels: list[int]
    removed_params: int = 0
    widths: dict[str, int] = field(default_factory=dict)


def block_shape(block: nn.Module) -> BlockShape:
    attn, mlp = block.self_attn, block.mlp
    head_dim = int(attn.head_dim)
    return BlockShape(
        hidden=attn.q_proj.in_features,
        heads=attn.q_proj.out_features // head_dim,
        kv_heads=attn.k_proj.out_features // head_dim,
        head_dim=head_dim,
        intermediate=mlp.down_proj.in_features,
    )


def min_channels(shape: BlockShape, min_mlp_keep: float) -> int:
    return max(1, math.ceil(min_mlp_keep * shape.intermediate))


def check_structured(model: nn.Module, adapter: Any, config: Any, args: Any) -> list[BlockShape]:
    """Refuse, before any heavy work, a family whose attention cannot be shrunk validly and a fraction that would
    empty a block (beyond the minimum every block keeps). Returns the block shapes."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if getattr(adapter, "library", None) != "transformers" or model_type not in FAMILIES:
        raise ValueError(
            f"structured pruning cannot shrink this model ({model_type or type(model).__name__}) validly: it supports "
            f"{', '.join(FAMILIES)} decoders (attention reshaped with -1 heads, bias flags for the compensation)"
        )
    shapes = []
    for index, block in enumerate(adapter.blocks(model)):
        if not all(isinstance(block.get_submodule(name), nn.Linear) for name in LINEARS):
            raise ValueError(f"block {index} does not have the LLaMA linears {', '.join(LINEARS)}")
        shapes.append(block_shape(block))
    total = sum(s.params for s in shapes)
    removable = sum(
        (s.units(args.attention_unit) - 1) * s.unit_cost(args.attention_unit)
        + (s.intermediate - min_channels(s, args.min_mlp_keep)) * s.channel_cost
        for s in shapes
    )
    if config.sparsity * total > removable:
        raise ValueError(
            f"sparsity={config.sparsity:g} would empty blocks: every block keeps at least one attention unit and "
            f"min_mlp_keep={args.min_mlp_keep:g} of its MLP channels, so at most {removable / total:.4f} of the "
            "block parameters can be removed; choose a smaller sparsity"
        )
    return shapes


def _standardize(x: torch.Tensor) -> torch.Tensor:
    std = x.std() if x.numel() > 1 else x.new_zeros(())
    return (x - x.mean()) / std if float(std) > 0 else torch.zeros_like(x)


def attention_units(shape: BlockShape, head_scores: torch.Tensor, attention_unit: str) -> list[list[int]]:
    """The query heads of each attention unit, in removal order for "head" units (rank 0 = least important)."""
    g = shape.group_size
    if attention_unit == "group":
        return [list(range(k * g, (k + 1) * g)) for k in range(shape.kv_heads)]
    order = head_scores.reshape(shape.kv_heads, g).argsort(dim=1, stable=True)
    return [[k * g + int(order[k, r]) for k in range(shape.kv_heads)] for r in range(g)]


@dataclass
class _Candidate:
    key: float
    cost: int
    block: int
    kind: str  # "attention" or "mlp"
    index: int  # unit index (attention) or channel


def select(
    shapes: list[BlockShape],
    scores: list[tuple[torch.Tensor, torch.Tensor]],
    fraction: float,
    args: Any,
    ranking: str,
) -> list[Kept]:
    """Choose what every block keeps so that about `fraction` of all block parameters are removed."""
    unit = args.attention_unit
    units = [attention_units(s, h, unit) for s, (h, _) in zip(shapes, scores)]
    candidates: list[_Candidate] = []
    for b, (shape, (heads, channels)) in enumerate(zip(shapes, scores)):
        per_unit = torch.stack([heads[u].sum() for u in units[b]])
        if ranking == "standardized":
            z = _standardize(heads.double())
            unit_keys = torch.stack([z[u].mean() for u in units[b]])
            channel_keys = _standardize(channels.double())
        else:  # per-param: scores in loss units, compared per removed parameter
            unit_keys = per_unit.double() / shape.unit_cost(unit)
            channel_keys = channels.double() / shape.channel_cost
        candidates += [_Candidate(float(k), shape.unit_cost(unit), b, "attention", i) for i, k in enumerate(unit_keys)]
        candidates += [_Candidate(float(k), shape.channel_cost, b, "mlp", i) for i, k in enumerate(channel_keys)]
    removed: list[dict[str, list[int]]] = [{"attention": [], "mlp": []} for _ in shapes]
    if args.mode == "uniform":
        for b, shape in enumerate(shapes):
            n_units = min(round(fraction * shape.units(unit)), shape.units(unit) - 1)
            rest = fraction * shape.params - n_units * shape.unit_cost(unit)
            n_channels = min(
                max(round(rest / shape.channel_cost), 0), shape.intermediate - min_channels(shape, args.min_mlp_keep)
            )
            mine = [c for c in candidates if c.block == b]
            attention = sorted((c for c in mine if c.kind == "attention"), key=lambda c: c.key)
            mlp = sorted((c for c in mine if c.kind == "mlp"), key=lambda c: c.key)
            if unit == "head":  # ranks go in order: the n least important heads of every group
                attention = sorted(attention, key=lambda c: c.index)
            removed[b]["attention"] = [c.index for c in attention[:n_units]]
            removed[b]["mlp"] = [c.index for c in mlp[:n_channels]]
    else:
        budget = fraction * sum(s.params for s in shapes)
        spent = 0
        for c in sorted(candidates, key=lambda c: c.key):
            shape, mine = shapes[c.block], removed[c.block]
            if spent + c.cost / 2 > budget:
                continue
            if c.kind == "attention":
                if len(mine["attention"]) >= shape.units(unit) - 1:
                    continue
                if unit == "head" and c.index != len(mine["attention"]):
                    continue  # a higher rank before a lower one (ties): skipped, keeps every group equal
            elif len(mine["mlp"]) >= shape.intermediate - min_channels(shape, args.min_mlp_keep):
                continue
            mine[c.kind].append(c.index)
            spent += c.cost
    return [_kept(s, u, r, unit) for s, u, r in zip(shapes, units, removed)]


def _kept(shape: BlockShape, units: list[list[int]], removed: dict[str, list[int]], unit: str) -> Kept:
    gone_heads = {h for i in removed["attention"] for h in units[i]}
    heads = [h for h in range(shape.heads) if h not in gone_heads]
    kv = [k for k in range(shape.kv_heads) if unit == "head" or k not in removed["attention"]]
    channels = sorted(set(range(shape.intermediate)) - set(removed["mlp"]))
    cost = len(removed["attention"]) * shape.unit_cost(unit) + len(removed["mlp"]) * shape.channel_cost
    widths = {"num_attention_heads": len(heads), "num_key_value_heads": len(kv), "intermediate_size": len(channels)}
    return Kept(heads, kv, channels, cost, widths)
