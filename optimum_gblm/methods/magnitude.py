"""Magnitude pruning: |W|. One threshold per matrix by default (as in the papers); per row on request."""

import torch

from .base import PruningMethod, TargetJob
from .registry import register_method


@register_method
class MagnitudePruning(PruningMethod):
    name = "magnitude"
    groups = ("layer", "row")
    description = "|W| (per layer by default; group=row is a different, much stronger baseline)"
    card_description = "magnitude pruning, the smallest absolute weights are removed"

    def score(self, job: TargetJob) -> torch.Tensor:
        return job.weight.abs().float()
