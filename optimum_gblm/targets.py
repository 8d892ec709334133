"""Prune targets: what can be pruned, described independently of `nn.Linear`.

A target is a 2-D weight view `[d_out, d_in]` (a linear's weight, or one slice of a 3-D parameter such as a stack of
experts) plus the input site it reads from. Targets that read the same input (q/k/v, gate/up) share one site, so
their input statistics are accumulated once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class PruneTarget:
    """One prunable 2-D weight. `name` is unique; for a linear it is the module's fully qualified name."""

    name: str
    module: nn.Module  # the module owning the parameter (its forward input is the target's input)
    input_site: str  # targets with the same site read the same input tensor
    param_name: str = "weight"
    index: int | None = None  # a 2-D slice `parameter[index]` of a 3-D parameter
    # Fewer calibration tokens than this at the target's input: pruned data-free (|W|), logged with the count. Only
    # targets that see a data-dependent share of the tokens (routed experts) set it.
    min_tokens: int = 0

    @property
    def parameter(self) -> nn.Parameter:
        return getattr(self.module, self.param_name)

    def weight(self) -> torch.Tensor:
        """The 2-D weight view; in-place changes write through to the model's parameter."""
        data = self.parameter.data
        view = data if self.index is None else data[self.index]
        if view.dim() != 2:
            raise ValueError(f"{self.name}: a prune target needs a 2-D weight view, got shape {tuple(view.shape)}")
        return view

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.weight().shape
        return int(rows), int(cols)

    @property
    def in_features(self) -> int:
        return self.shape[1]

    def observe_inputs(self, callback: Callable[[torch.Tensor], Any]) -> torch.utils.hooks.RemovableHandle:
        """Call `callback(input)` with the tensor entering the owning module at every forward."""
        return self.module.register_forward_hook(lambda module, args, output: callback(args[0]))


def linear_target(name: str, module: nn.Linear, input_site: str | None = None) -> PruneTarget:
    return PruneTarget(name=name, module=module, input_site=input_site or name)


def group_by_site(targets: list[PruneTarget]) -> dict[str, list[PruneTarget]]:
    """Targets by input site, in first-seen order."""
    sites: dict[str, list[PruneTarget]] = {}
    for target in targets:
        sites.setdefault(target.input_site, []).append(target)
    return sites


def target_modules(targets: list[PruneTarget]) -> dict[str, nn.Module | PruneTarget]:
    """What the gradient pass hooks, by target name: the owning module of a whole-weight target (its `.weight`),
    the target itself for a slice of a 3-D parameter (the parameter's gradient is folded slice by slice)."""
    return {t.name: t.module if t.index is None else t for t in targets}


def target_weight(target: nn.Module | PruneTarget) -> torch.Tensor:
    """The 2-D weight of a `target_modules` value."""
    return target.weight() if isinstance(target, PruneTarget) else target.weight


def slice_name(parameter: str, index: int) -> str:
    """The target name of slice `index` of a 3-D parameter (its fully qualified name): `...experts.down_proj[3]`."""
    return f"{parameter}[{index}]"


def parse_slice_name(name: str) -> tuple[str, int | None]:
    """(parameter FQN, index) of a slice name, (name, None) for any other target name."""
    if name.endswith("]") and "[" in name:
        head, _, index = name[:-1].rpartition("[")
        if index.isdigit():
            return head, int(index)
    return name, None


def resolve_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The 2-D weight a target name denotes in `model`: `<name>.weight`, or a slice of a 3-D parameter."""
    parameter, index = parse_slice_name(name)
    if index is None:
        return model.get_submodule(name).weight
    return model.get_parameter(parameter)[index]
