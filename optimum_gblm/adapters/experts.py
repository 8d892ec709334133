"""Mixture-of-experts layers with fused 3-D expert parameters (transformers 5's `...Experts` modules).

Each expert's projection is one prune target: the 2-D slice `gate_up_proj[e]` ([2I, H], or `up_proj[e]` for
ungated experts) and `down_proj[e]` ([H, I]), both stored as the weight is used (`F.linear(x, w[e])`). An expert
is pruned with the statistics of the tokens routed to it: a hook on the experts module reads the routing the
model computed itself (the `top_k_index` argument its router produced), selects the expert's tokens for
`gate_up_proj[e]` and recomputes the expert's gated hidden activation for `down_proj[e]` with the module's own gate
function. The router (`gate`) is never a target; shared experts are ordinary MLP linears.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..targets import PruneTarget, slice_name

# An expert that sees fewer calibration tokens than this is pruned by magnitude instead (docs/families.md#experts).
MIN_EXPERT_TOKENS = 16


def expert_parameters(module: nn.Module) -> tuple[str, str] | None:
    """(input projection, output projection) parameter names of a fused experts module, or None if it is not one."""
    down = getattr(module, "down_proj", None)
    if not isinstance(down, nn.Parameter) or down.dim() != 3:
        return None
    for first in ("gate_up_proj", "up_proj"):
        param = getattr(module, first, None)
        if isinstance(param, nn.Parameter) and param.dim() == 3:
            return first, "down_proj"
    return None


def check_experts(name: str, module: nn.Module) -> None:
    """Refuse expert layouts whose 2-D slices are not [d_out, d_in] as used, before any work."""
    if getattr(module, "is_transposed", False):
        raise ValueError(
            f"{name} ({type(module).__name__}) stores its expert weights transposed ([E, d_in, d_out]): such experts "
            "are not supported yet; exclude them with ignore=[...] or prune another family"
        )


def expert_hidden(module: nn.Module, index: int, x: torch.Tensor) -> torch.Tensor:
    """The input of `down_proj[index]` for the tokens `x` routed to expert `index` (the module's own gate)."""
    gated = hasattr(module, "gate_up_proj")
    weight = module.gate_up_proj[index] if gated else module.up_proj[index]
    bias = None
    if getattr(module, "has_bias", False):
        bias = (module.gate_up_proj_bias if gated else module.up_proj_bias)[index]
    hidden = F.linear(x, weight, bias)
    if not gated:
        return module.act_fn(hidden)
    if hasattr(module, "_apply_gate"):
        return module._apply_gate(hidden)
    gate, up = hidden.chunk(2, dim=-1)
    return module.act_fn(gate) * up


class _Handles:
    def __init__(self, *handles: Any) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass(frozen=True)
class ExpertTarget(PruneTarget):
    """One expert's slice of a fused experts parameter; observes only the inputs routed to that expert."""

    moe_block: nn.Module | None = None  # the module calling the experts (its input tells the samples per forward)
    stage: str = "input"  # "input": routed hidden states (gate_up / up); "hidden": the gated activation (down)

    def observe_inputs(self, callback: Callable[..., Any]) -> Any:
        samples = {"n": None}

        def count(module: nn.Module, args: tuple, kwargs: dict) -> None:
            states = args[0] if args else kwargs.get("hidden_states")
            samples["n"] = int(states.shape[0]) if isinstance(states, torch.Tensor) and states.dim() == 3 else None

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            routing = args[1] if len(args) > 1 else kwargs.get("top_k_index")
            if not isinstance(routing, torch.Tensor):
                raise RuntimeError(
                    f"{self.name}: {type(module).__name__} was not called as experts(hidden_states, top_k_index, "
                    "...): its routed tokens cannot be observed"
                )
            rows = (routing.reshape(hidden.shape[0], -1) == self.index).any(dim=-1)
            x = hidden[rows]
            if self.stage == "hidden":
                x = expert_hidden(module, self.index, x)
            callback(x, samples["n"] if samples["n"] is not None else 1)

        handles = [self.module.register_forward_hook(hook, with_kwargs=True)]
        if self.moe_block is not None:
            handles.append(self.moe_block.register_forward_pre_hook(count, with_kwargs=True))
        return _Handles(*handles)


def expert_targets(
    name: str, module: nn.Module, moe_block: nn.Module | None, min_tokens: int = MIN_EXPERT_TOKENS
) -> list[ExpertTarget]:
    """Per expert (in order): its input and output projection targets, each with its own input site."""
    params = expert_parameters(module)
    if params is None:
        return []
    check_experts(name, module)
    first, down = params
    out: list[ExpertTarget] = []
    for index in range(getattr(module, first).shape[0]):
        for param, stage in ((first, "input"), (down, "hidden")):
            target_name = slice_name(f"{name}.{param}", index)
            out.append(
                ExpertTarget(
                    name=target_name,
                    module=module,
                    input_site=target_name,
                    param_name=param,
                    index=index,
                    min_tokens=max(1, min_tokens),  # no routed token at all is never a statistic
                    moe_block=moe_block,
                    stage=stage,
                )
            )
    return out
