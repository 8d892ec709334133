"""gblm-obs: SparseGPT's OBS update with a gradient term in the selection score (docs/semantics.md#9-gblm-obs).

Inside every scored slice the candidate score is `S / mean(S) + beta * T / mean(T)`, with SparseGPT's saliency
`S = w^2 / diag(Hinv)^2` and the gradient saliency `T = (|w| * G)^2`. Its default allocation is the gradient-based
one (allocation.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import TargetJob
from .registry import register_method
from .sparsegpt import ScoreFn, SparseGPTArgs, SparseGPTPruning, obs_score


@dataclass
class GBLMOBSArgs(SparseGPTArgs):
    beta: float = field(default=1.0, metadata={"help": "Weight of the gradient term in the OBS selection score."})


@register_method
class GBLMOBSPruning(SparseGPTPruning):
    name = "gblm-obs"
    needs_gradients = True
    default_allocation = "gradient"
    args = GBLMOBSArgs
    description = "SparseGPT with gradient-informed selection (beta) and Fisher-based sparsity allocation (gamma)"
    card_description = "SparseGPT's OBS update with a gradient term in the selection score"

    def score_fn(self, job: TargetJob) -> ScoreFn:
        beta = job.args.beta
        if beta == 0:
            return obs_score  # exactly SparseGPT's selection
        if job.gradient is None:
            raise RuntimeError(f"{job.name}: gblm-obs needs the gradient accumulation of this target")
        G = job.gradient.float().to(job.weight.device)

        def score(block: torch.Tensor, hinv_diag: torch.Tensor, cols: slice) -> torch.Tensor:
            S = obs_score(block, hinv_diag, cols)
            T = (block.abs() * G[:, cols]) ** 2
            return S / S.mean().clamp_min(1e-30) + beta * T / T.mean().clamp_min(1e-30)

        return score
