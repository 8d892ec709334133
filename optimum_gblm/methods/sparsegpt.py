"""SparseGPT (Frantar & Alistarh): blocked OBS reconstruction with lazy updates (docs/semantics.md#8-sparsegpt).

The kernels take a score function, so gblm-obs (gblm_obs.py) reuses them with a gradient term in the selection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..masks import check_finite, parse_pattern, prune_count, select_lowest
from ..utils import torch_threads
from .base import MethodArgs, PruningMethod, TargetJob
from .registry import register_method

ScoreFn = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]


def obs_score(block: torch.Tensor, hinv_diag: torch.Tensor, cols: slice) -> torch.Tensor:
    """SparseGPT's saliency of the (already updated) weights of a column slice."""
    return block**2 / hinv_diag.reshape(1, -1) ** 2


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of the dampened H^-1, and the dead inputs (H_jj = 0, which get H_jj = 1; the caller
    zeroes their weight columns). It depends on H only, so the targets of one input site share it."""
    check_finite(hessian, "Hessian statistics")
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    with _fixed_threads_on_cpu(H.device):
        L = torch.linalg.cholesky(H)
        Hinv = torch.cholesky_inverse(L)
        return torch.linalg.cholesky(Hinv, upper=True), dead


# LAPACK's threaded Cholesky rounds differently for each thread count, so the factor (and every weight SparseGPT
# reconstructs, and masks at near-ties) would depend on the caller's torch.get_num_threads(). A fixed count makes it
# reproducible across thread settings; 2 is the count the recorded golden hashes were made with, so results did not
# change. Its cost, O(d_in^3) once per input site, stays below the OBS update's O(d_out * d_in^2) per target.
FACTOR_THREADS = 2


@contextlib.contextmanager
def _fixed_threads_on_cpu(device: torch.device) -> Iterator[None]:
    if device.type != "cpu":
        yield
        return
    with torch_threads(FACTOR_THREADS):
        yield


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
            mask1[:, i : i + m] = select_lowest(scores, n)
        w = W1[:, i]
        q = w.masked_fill(mask1[:, i], 0)
        Q1[:, i] = q
        err = (w - q) / Hinv1[i, i]
        W1[:, i:].sub_(torch.outer(err, Hinv1[i, i:]))
        Err1[:, i] = err
    return Q1, Err1


def obs_prune(
    weight: torch.Tensor,
    factor: tuple[torch.Tensor, torch.Tensor],
    sparsity: float,
    nm: tuple[int, int] | None,
    blocksize: int = 128,
    score_fn: ScoreFn = obs_score,
) -> torch.Tensor:
    """Prune `weight` in place with the blocked OBS update; return the prune mask.

    Unstructured: each block's mask is chosen from its current weights with one threshold over rows x block
    columns; the per-block counts add up to exactly floor(numel * sparsity). N:M: at every column i % M == 0,
    the N lowest scores of the next M columns in each row.
    """
    W = weight.detach().float().clone()
    rows, cols = W.shape
    Hinv, dead = (t.to(W.device) for t in factor)
    W[:, dead] = 0
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
            check_finite(scores)
            mask1 = select_lowest(scores.reshape(-1), k).reshape(rows, count)
        else:
            check_finite(score_fn(W1, torch.diag(Hinv1), slice(i1, i2)))  # once per block, not per group of M
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        Q1, Err1 = _block_sequential(W1, Hinv1, mask1, nm, score_fn, i1)
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    check_finite(W, "updated weights")
    weight.copy_(W.to(weight.dtype))
    return mask


@dataclass
class SparseGPTArgs(MethodArgs):
    blocksize: int = field(default=128, metadata={"help": "Column block size of the OBS update."})
    percdamp: float = field(
        default=0.01, metadata={"help": "Dampening added to the Hessian diagonal, as a fraction of its mean."}
    )


@register_method
class SparseGPTPruning(PruningMethod):
    name = "sparsegpt"
    statistic = "hessian"
    groups = ("block",)
    args = SparseGPTArgs
    description = "blocked OBS mask selection with weight reconstruction (Frantar & Alistarh)"
    card_description = "SparseGPT, OBS-style pruning with a second-order weight update"

    def score_fn(self, job: TargetJob) -> ScoreFn:
        return obs_score

    def prune(self, job: TargetJob) -> torch.Tensor:
        if job.stats is None:
            raise RuntimeError(f"{job.name}: Hessian statistics were not collected")
        stats, args = job.stats, job.args
        factor = stats.derived(
            ("obs-inverse-factor", args.percdamp), lambda: inverse_hessian_factor(stats.hessian(), args.percdamp)
        )
        return obs_prune(
            job.weight, factor, job.sparsity, parse_pattern(job.pattern), args.blocksize, self.score_fn(job)
        )
