"""Magnitude pruning: |W|. One threshold per matrix by default (as in the papers); per row on request."""

import torch

from .base import LayerJob, PruningMethod


class MagnitudePruning(PruningMethod):
    name = "magnitude"
    groups = ("layer", "row")
    description = "|W| (per layer by default; group=row is a different, much stronger baseline)"

    def score(self, job: LayerJob) -> torch.Tensor:
        return job.weight.detach().abs().float()
