"""Wanda: |W_ij| * sqrt(a_j), compared per output row (docs/semantics.md#5-scores)."""

import torch

from .base import PruningMethod, TargetJob, activation_norm
from .registry import register_method


@register_method
class WandaPruning(PruningMethod):
    name = "wanda"
    statistic = "activations"
    description = "|W| * ||X||_2 / sqrt(N) per input feature (Sun et al.)"
    card_description = "Wanda, weight magnitude times input activation norm, no weight update"

    def score(self, job: TargetJob) -> torch.Tensor:
        return job.weight.abs().float() * activation_norm(job).to(job.weight.device)
