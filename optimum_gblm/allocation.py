"""Gradient-based sparsity allocation across targeted linears (unstructured only).

Rank every targeted weight by the empirical-Fisher saliency `G2^2 * w^2`, find the global threshold that would
prune the target fraction `s`, let `p_l` be the fraction of linear l under it, and give l the sparsity
`s + gamma * (p_l - s)`, clipped to `[s - clip, s + clip]` and shifted so the parameter-weighted mean is `s`.
The shift is solved jointly with the clip (bisection), so both hold exactly.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

EXACT_LIMIT = 200_000_000  # above this many weights the global threshold is found by bisection on counts


def _saliency(weight: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    return (g2.float().to(weight.device) ** 2 * weight.detach().float() ** 2).reshape(-1)


def global_threshold(weights: dict[str, torch.Tensor], g2: dict[str, torch.Tensor], sparsity: float) -> float:
    total = sum(w.numel() for w in weights.values())
    k = max(1, int(total * sparsity))
    if total <= EXACT_LIMIT:
        values = torch.cat([_saliency(w, g2[n]).cpu() for n, w in weights.items()])
        return float(values.kthvalue(k).values)
    lo, hi = 0.0, max(float(_saliency(w, g2[n]).max()) for n, w in weights.items())
    for _ in range(60):
        mid = (lo + hi) / 2
        below = sum(int((_saliency(w, g2[n]) <= mid).sum()) for n, w in weights.items())
        lo, hi = (mid, hi) if below < k else (lo, mid)
    return hi


def gradient_allocation(
    weights: dict[str, torch.Tensor], g2: dict[str, torch.Tensor], sparsity: float, gamma: float, clip: float = 0.2
) -> dict[str, float]:
    """Per-linear sparsities with parameter-weighted mean exactly `sparsity`, each within `sparsity +- clip`."""
    missing = [n for n in weights if n not in g2]
    if missing:
        raise ValueError(f"no l2 gradient accumulation for {missing[:3]}: collect gradients with the l2 norm")
    threshold = global_threshold(weights, g2, sparsity)
    sizes = {n: w.numel() for n, w in weights.items()}
    raw = {
        n: sparsity + gamma * (float((_saliency(w, g2[n]) <= threshold).float().mean()) - sparsity)
        for n, w in weights.items()
    }
    lo_clip, hi_clip = max(sparsity - clip, 0.0), min(sparsity + clip, 1.0 - 1e-6)
    total = sum(sizes.values())

    def mean_after(shift: float) -> float:
        return sum(sizes[n] * min(max(raw[n] + shift, lo_clip), hi_clip) for n in raw) / total

    # mean_after is monotone in the shift: bisect until it equals the target to float precision.
    lo, hi = -1.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_after(mid) < sparsity else (lo, mid)
    shift = (lo + hi) / 2
    alloc = {n: min(max(raw[n] + shift, lo_clip), hi_clip) for n in raw}
    # Remove the last rounding residue on the largest unclipped layer so the mean is exact.
    residue = sparsity * total - sum(sizes[n] * alloc[n] for n in alloc)
    free = [n for n in alloc if lo_clip < alloc[n] < hi_clip] or list(alloc)
    biggest = max(free, key=lambda n: sizes[n])
    alloc[biggest] = min(max(alloc[biggest] + residue / sizes[biggest], lo_clip), hi_clip)
    values = list(alloc.values())
    logger.info(
        "gradient allocation: per-linear sparsity %.4f .. %.4f (target %.4f)", min(values), max(values), sparsity
    )
    return alloc
