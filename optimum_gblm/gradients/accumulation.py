"""Accumulated per-sample gradient norms (GBLM stage 1 results) and the norms a config needs."""

from __future__ import annotations

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
    # sqrt(l2sq) is a full-size copy: made once per state of the accumulators (every fold adds a sample).
    _l2: tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(n for n, d in (("l1", self.l1), ("l2", self.l2sq)) if d)

    def get(self, norm: str) -> dict[str, torch.Tensor]:
        """G per module: the l1 sum, or the l2 norm sqrt(sum (c g)^2), computed once until `nsamples` changes or
        `l2sq` is replaced. Do not modify the returned tensors in place: later calls return the same ones."""
        if norm == "l1" and self.l1:
            return self.l1
        if norm == "l2" and self.l2sq:
            if self._l2 is None or self._l2[0] != self.nsamples or self._l2[1] is not self.l2sq:
                self._l2 = (self.nsamples, self.l2sq, {k: v.sqrt() for k, v in self.l2sq.items()})
            return self._l2[2]
        raise KeyError(f"the {norm} accumulation was not collected (have: {', '.join(self.norms) or 'none'})")

    def modules(self) -> list[str]:
        return list(self.l1 or self.l2sq)


class NonFiniteGradientError(FloatingPointError):
    """A per-sample gradient contained NaN or inf."""


def required_norms(config: GBLMConfig) -> tuple[str, ...]:
    """The accumulations a config needs: its gradient norm, plus l2 for gradient-based allocation."""
    norms = {config.gradient_norm}
    if config.effective_allocation == "gradient":
        norms.add("l2")
    return tuple(sorted(norms))
