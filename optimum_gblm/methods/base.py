"""The method interface: a pure scoring kernel plus a prune step, with what each method needs declared as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..masks import select_mask

if TYPE_CHECKING:
    from ..configuration import GBLMConfig
    from ..statistics import LayerStatistics


@dataclass
class LayerJob:
    """Everything a method needs to prune one linear layer."""

    name: str
    weight: torch.Tensor  # the module's weight, modified in place
    sparsity: float  # this layer's target (uniform or allocated)
    config: GBLMConfig
    stats: LayerStatistics | None = None
    gradient: torch.Tensor | None = None  # G of ALGORITHMS.md section 3, with the config's norm


class PruningMethod:
    """Score-based method: prune the lowest scores of each comparison group."""

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = False
    # "activations" (running mean of squared inputs), "hessian" (X X^T), or None (no forward pass needed)
    statistic: ClassVar[str | None] = None
    groups: ClassVar[tuple[str, ...]] = ("row", "layer")  # the first one is the default
    default_allocation: ClassVar[str] = "uniform"
    description: ClassVar[str] = ""

    def score(self, job: LayerJob) -> torch.Tensor:
        raise NotImplementedError

    def prune(self, job: LayerJob) -> torch.Tensor:
        """Zero the selected weights in place and return the boolean prune mask."""
        scores = self.score(job)
        mask = select_mask(scores, job.sparsity, job.config.pattern, job.config.effective_group)
        job.weight.data.masked_fill_(mask.to(job.weight.device), 0)
        return mask


def activation_norm(job: LayerJob) -> torch.Tensor:
    """sqrt(a_j) as a [1, d_in] row: the per-input-feature activation norm divided by sqrt(N)."""
    if job.stats is None:
        raise RuntimeError(f"{job.name}: activation statistics were not collected")
    return job.stats.activation_sq_mean().sqrt().reshape(1, -1)


def gradient_term(job: LayerJob) -> torch.Tensor:
    """|W| * G, formed in fp32, or in fp16 when `score_dtype='float16'` mimics the reference code."""
    if job.gradient is None:
        raise RuntimeError(f"{job.name}: no gradient accumulation for this layer (run the gradient pass first)")
    weight = job.weight.detach()
    gradient = job.gradient.to(weight.device)
    if job.config.score_dtype == "float16":
        return (weight.abs().half() * gradient.half()).float()
    return weight.abs().float() * gradient.float()
