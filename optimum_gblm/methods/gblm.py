"""GBLM-Pruner and its gradient-only ablation (docs/semantics.md#5-scores)."""

import torch

from .base import PruningMethod, TargetJob, activation_norm, gradient_term
from .registry import register_method


@register_method
class GBLMPruning(PruningMethod):
    name = "gblm"
    needs_gradients = True
    statistic = "activations"
    description = "|W| * sqrt(a) + |W| * G (Das et al., GBLM-Pruner)"
    card_description = (
        "GBLM-Pruner, weight magnitude times (scaled gradient norm + input activation norm), no weight update"
    )

    def score(self, job: TargetJob) -> torch.Tensor:
        if job.score_dtype == "float16":
            # The reference forms the whole metric in half precision.
            wanda = job.weight.abs().half() * activation_norm(job).half().to(job.weight.device)
            return (wanda + gradient_term(job).half()).float()
        return job.weight.abs().float() * activation_norm(job).to(job.weight.device) + gradient_term(job)


@register_method
class GradientPruning(PruningMethod):
    name = "gradient"
    needs_gradients = True
    description = "|W| * G, G the accumulated per-sample gradient norm (GBLM ablation)"
    card_description = "weight magnitude times the scaled gradient norm (the gradient-only ablation of GBLM-Pruner)"

    def score(self, job: TargetJob) -> torch.Tensor:
        return gradient_term(job)
