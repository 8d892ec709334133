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

HIGH_BITS = 16  # pass 1 counts saliencies by their top 15 non-sign bits, pass 2 by the low 16 inside one bucket


def _saliency(weight: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    return (g2.float().to(weight.device) ** 2 * weight.detach().float() ** 2).reshape(-1)


def _bits(weight: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """The saliency's fp32 bit patterns as int32. For non-negative floats (squares) the bit patterns order exactly as
    the values do; the sign bit is cleared so that a NaN of either sign sorts above inf, as `kthvalue` puts it."""
    return _saliency(weight, g2).view(torch.int32) & 0x7FFFFFFF


def _kth_in_counts(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """The bucket holding the k-th smallest value (1-based) and k's rank inside that bucket."""
    cumulative = counts.cumsum(0)
    bucket = int(torch.searchsorted(cumulative, torch.tensor([k], dtype=cumulative.dtype)).item())
    before = int(cumulative[bucket - 1]) if bucket > 0 else 0
    return bucket, k - before


def global_threshold(weights: dict[str, torch.Tensor], g2: dict[str, torch.Tensor], sparsity: float) -> float:
    """The k-th smallest saliency over all targets (k = max(1, floor(P * s))), exactly, without holding them all.

    A radix selection on the fp32 bit patterns: pass 1 counts every matrix's saliencies into 2^15 buckets of their
    high bits; pass 2 counts, in the one bucket holding the k-th value, the 2^16 values of the low bits. Memory is
    one matrix's saliency plus two count vectors, whatever the model size; the result is the value `kthvalue` of
    the concatenation gives (docs/semantics.md#9-gblm-obs)."""
    total = sum(w.numel() for w in weights.values())
    if total == 0:
        raise ValueError("gradient allocation needs at least one target weight: the targets are empty")
    k = max(1, int(total * sparsity))
    high = torch.zeros(1 << (31 - HIGH_BITS), dtype=torch.int64)
    for n, w in weights.items():
        high += torch.bincount(_bits(w, g2[n]) >> HIGH_BITS, minlength=high.numel()).cpu()
    bucket, rank = _kth_in_counts(high, k)
    low = torch.zeros(1 << HIGH_BITS, dtype=torch.int64)
    for n, w in weights.items():
        bits = _bits(w, g2[n])
        inside = bits[(bits >> HIGH_BITS) == bucket] & ((1 << HIGH_BITS) - 1)
        low += torch.bincount(inside, minlength=low.numel()).cpu()
    value, _ = _kth_in_counts(low, rank)
    pattern = torch.tensor([(bucket << HIGH_BITS) | value], dtype=torch.int32)
    return float(pattern.view(torch.float32)[0])


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
