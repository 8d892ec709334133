"""GBLM-Pruner and its gradient-only ablation."""

import torch

from .base import LayerJob, PruningMethod, activation_norm, gradient_term


class GradientPruning(PruningMethod):
    name = "gradient"
    needs_gradients = True
    description = "|W| * G, G the accumulated per-sample gradient norm (GBLM ablation)"

    def score(self, job: LayerJob) -> torch.Tensor:
        return gradient_term(job)


class GBLMPruning(PruningMethod):
    name = "gblm"
    needs_gradients = True
    statistic = "activations"
    description = "|W| * sqrt(a) + |W| * G (Das et al., GBLM-Pruner)"

    def score(self, job: LayerJob) -> torch.Tensor:
        if job.config.score_dtype == "float16":
            # The reference forms the whole metric in half precision.
            wanda = job.weight.detach().abs().half() * activation_norm(job).half().to(job.weight.device)
            return (wanda + gradient_term(job).half()).float()
        return job.weight.detach().abs().float() * activation_norm(job).to(job.weight.device) + gradient_term(job)
