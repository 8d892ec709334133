"""Running one block on captured inputs: shared by the sequential pipeline, the block-wise gradient pass and the
methods that re-run a block (sparsegpt-recon), which may not import the pipelines (they import the methods)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .utils import move_to


def call_block(
    block: nn.Module, states: torch.Tensor, kwargs: dict[str, Any], dtype: torch.dtype | None = None
) -> Any:
    """The block's raw output (a tensor or a tuple), with the captured arguments moved to the block's device and
    the states also cast to `dtype` when one is given."""
    device = next(block.parameters()).device
    kwargs = move_to(dict(kwargs), device)
    extra = kwargs.pop("__args__", ())
    return block(states.to(device) if dtype is None else states.to(device, dtype), *extra, **kwargs)


def run_block(
    block: nn.Module, states: torch.Tensor, kwargs: dict[str, Any], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The block's output hidden states (`call_block`'s first element when it returns a tuple)."""
    out = call_block(block, states, kwargs, dtype)
    return out[0] if isinstance(out, (tuple, list)) else out
