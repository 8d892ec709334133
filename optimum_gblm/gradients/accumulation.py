"""Accumulated per-sample gradient norms (GBLM stage 1 results) and the norms a config needs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..configuration import GBLMConfig

NORMS = ("l1", "l2")


@dataclass
class GradientAccumulation:
    """Accumulated per-sample gradient norms, keyed by module FQN (the module owning the weight)."""

    scale: float
    nsamples: int = 0
    l1: dict[str, torch.Tensor] = field(default_factory=dict)
    l2sq: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(n for n, d in (("l1", self.l1), ("l2", self.l2sq)) if d)

    def get(self, norm: str) -> Mapping[str, torch.Tensor]:
        """G per module: the l1 sum (the accumulators themselves: do not modify them in place), or the l2 norm
        sqrt(sum (c g)^2), taken per module when it is read, so no full-size copy of every module is held."""
        if norm == "l1" and self.l1:
            return self.l1
        if norm == "l2" and self.l2sq:
            return SqrtView(self.l2sq)
        raise KeyError(f"the {norm} accumulation was not collected (have: {', '.join(self.norms) or 'none'})")

    def modules(self) -> list[str]:
        return list(self.l1 or self.l2sq)


class SqrtView(Mapping[str, torch.Tensor]):
    """`sqrt` of each accumulator of a dict, computed when an item is read (and always of its current value)."""

    def __init__(self, squares: dict[str, torch.Tensor]) -> None:
        self._squares = squares

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._squares[name].sqrt()

    def __iter__(self) -> Iterator[str]:
        return iter(self._squares)

    def __len__(self) -> int:
        return len(self._squares)


class NonFiniteGradientError(FloatingPointError):
    """A per-sample gradient contained NaN or inf."""


def required_norms(config: GBLMConfig) -> tuple[str, ...]:
    """The accumulations a config needs: its gradient norm where the method's selection reads gradients, plus l2 for
    gradient-based allocation (wanda or sparsegpt with allocation='gradient' need the l2 sums only). A config that
    needs none (wanda, uniform) collects its gradient norm when a gradient pass is asked of it (`collect_gradients`,
    the Trainer callback), as it always did."""
    norms = set()
    if config.selection_uses_gradients or not config.needs_gradients:
        norms.add(config.gradient_norm)
    if config.effective_allocation == "gradient":
        norms.add("l2")
    return tuple(sorted(norms))


def gradient_passes(config: GBLMConfig) -> list[tuple[str, ...]]:
    """The accumulations each gradient pass of a config keeps: one pass with all of them, or with
    `two_pass_gradients` the allocation's l2 first and then the selection's l1, one accumulator held at a time."""
    return [("l2",), ("l1",)] if config.two_pass_gradients and config.two_accumulations else [required_norms(config)]
