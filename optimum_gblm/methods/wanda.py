"""Wanda: |W_ij| * sqrt(a_j), compared per output row."""

import torch

from .base import LayerJob, PruningMethod, activation_norm


class WandaPruning(PruningMethod):
    name = "wanda"
    statistic = "activations"
    description = "|W| * ||X||_2 / sqrt(N) per input feature (Sun et al.)"

    def score(self, job: LayerJob) -> torch.Tensor:
        return job.weight.detach().abs().float() * activation_norm(job).to(job.weight.device)
