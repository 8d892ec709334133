"""SparseGPT (Frantar & Alistarh): blocked OBS reconstruction with lazy updates, and gblm-obs on top of it.

gblm-obs adds the per-weight gradient saliency to SparseGPT's candidate score inside every scored slice:
`S / mean(S) + beta * T / mean(T)` with `S = w^2 / diag(Hinv)^2` and `T = (|w| * G)^2`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..masks import _lowest, prune_count
from .base import LayerJob, PruningMethod

ScoreFn = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]


def obs_score(block: torch.Tensor, hinv_diag: torch.Tensor, cols: slice) -> torch.Tensor:
    """SparseGPT's saliency of the (already updated) weights of a column slice."""
    return block**2 / hinv_diag.reshape(1, -1) ** 2


def inverse_hessian_factor(hessian: torch.Tensor, weight: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of the dampened H^-1. Dead inputs (H_jj = 0) get H_jj = 1 and their column zeroed."""
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    weight[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def _block_sequential(
    W1: torch.Tensor,
    Hinv1: torch.Tensor,
    mask1: torch.Tensor,
    nm: tuple[int, int] | None,
    score_fn: ScoreFn,
    col0: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's column-by-column OBS update of one block (N:M masks are chosen here, from current weights).

    Returns the block's final weights Q1 and its scaled errors Err1; `mask1` is filled in place for N:M.
    """
    d = torch.diag(Hinv1)
    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        if nm is not None and i % nm[1] == 0:
            n, m = nm
            scores = score_fn(W1[:, i : i + m], d[i : i + m], slice(col0 + i, col0 + i + m))
            mask1[:, i : i + m] = _lowest(scores, n)
        w = W1[:, i]
        q = w.masked_fill(mask1[:, i], 0)
        Q1[:, i] = q
        err = (w - q) / Hinv1[i, i]
        W1[:, i:].sub_(torch.outer(err, Hinv1[i, i:]))
        Err1[:, i] = err
    return Q1, Err1


def obs_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    score_fn: ScoreFn = obs_score,
) -> torch.Tensor:
    """Prune `weight` in place with the blocked OBS update; return the prune mask.

    Unstructured: each block's mask is chosen from its current weights with one threshold over rows x block
    columns; the per-block counts add up to exactly floor(numel * sparsity). N:M: at every column i % M == 0,
    the N lowest scores of the next M columns in each row.
    """
    W = weight.detach().float().clone()
    rows, cols = W.shape
    Hinv = inverse_hessian_factor(hessian.float().to(W.device), W, percdamp)
    mask = torch.zeros_like(W, dtype=torch.bool)
    total_k = prune_count(W.numel(), sparsity)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        if nm is None:
            # Per-block share of the exact total, so rounding never drifts from floor(numel * s).
            k = prune_count(rows * i2, sparsity) - prune_count(rows * i1, sparsity)
            if i2 == cols:
                k = total_k - int(mask.sum())
            scores = score_fn(W1, torch.diag(Hinv1), slice(i1, i2))
            mask1 = _lowest(scores.reshape(-1), k).reshape(rows, count)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        Q1, Err1 = _block_sequential(W1, Hinv1, mask1, nm, score_fn, i1)
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    weight.data.copy_(W.to(weight.dtype))
    return mask


class SparseGPTPruning(PruningMethod):
    name = "sparsegpt"
    statistic = "hessian"
    groups = ("block",)
    description = "blocked OBS mask selection with weight reconstruction (Frantar & Alistarh)"

    def score_fn(self, job: LayerJob) -> ScoreFn:
        return obs_score

    def prune(self, job: LayerJob) -> torch.Tensor:
        if job.stats is None:
            raise RuntimeError(f"{job.name}: Hessian statistics were not collected")
        cfg = job.config
        return obs_prune(
            job.weight, job.stats.hessian(), job.sparsity, cfg.nm, cfg.blocksize, cfg.percdamp, self.score_fn(job)
        )


class GBLMOBSPruning(SparseGPTPruning):
    name = "gblm-obs"
    needs_gradients = True
    default_allocation = "gradient"
    description = "SparseGPT with gradient-informed selection (beta) and Fisher-based sparsity allocation (gamma)"

    def score_fn(self, job: LayerJob) -> ScoreFn:
        beta = job.config.beta
        if beta == 0:
            return obs_score  # exactly SparseGPT's selection
        if job.gradient is None:
            raise RuntimeError(f"{job.name}: gblm-obs needs the gradient accumulation of this layer")
        G = job.gradient.float().to(job.weight.device)

        def score(block: torch.Tensor, hinv_diag: torch.Tensor, cols: slice) -> torch.Tensor:
            S = obs_score(block, hinv_diag, cols)
            T = (block.abs() * G[:, cols]) ** 2
            return S / S.mean().clamp_min(1e-30) + beta * T / T.mean().clamp_min(1e-30)

        return score
