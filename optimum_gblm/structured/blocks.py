"""Whole-block removal, the simplest structured baseline: drop the blocks that change the residual stream least
(their measured influence, `runner.collect_statistics(..., influence=True)`), renumbering the rest."""

from __future__ import annotations

from typing import Any

from torch import nn


def remove_blocks(model: nn.Module, adapter: Any, drop: list[int]) -> None:
    """Delete the blocks `drop` (indices) in place; the config's layer count (and per-layer lists) follow, so plain
    transformers reloads the result."""
    blocks = adapter.blocks(model)
    if not drop or len(set(drop)) >= len(blocks):
        raise ValueError(f"remove between 1 and {len(blocks) - 1} blocks, not {len(set(drop))}")
    keep = [i for i in range(len(blocks)) if i not in set(drop)]
    remaining = nn.ModuleList([blocks[i] for i in keep])
    for new, block in enumerate(remaining):
        attn = getattr(block, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new
    parent_path, _, name = adapter.block_path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, remaining)
    config = model.config
    config.num_hidden_layers = len(keep)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(blocks):
        config.layer_types = [layer_types[i] for i in keep]


def influence_order(influence: list[float]) -> list[int]:
    """Block indices from the least to the most influential."""
    return sorted(range(len(influence)), key=lambda i: influence[i])
