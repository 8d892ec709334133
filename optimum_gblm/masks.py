"""Mask selection kernels: pure functions from a score tensor to a boolean prune mask.

Convention: `True` in a mask means "prune this weight". Lowest scores are pruned; ties are broken
deterministically by a stable sort, so the lower column (or flat) index is pruned first.
"""

from __future__ import annotations

import re

import torch

PATTERN_RE = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """Return `(n, m)` for an `N:M` pattern ("prune N of every M"), `None` for `unstructured`."""
    if pattern == "unstructured":
        return None
    match = PATTERN_RE.match(pattern) if isinstance(pattern, str) else None
    if match is None:
        raise ValueError(f"pattern={pattern!r} is invalid: use 'unstructured' or 'N:M' such as '2:4' or '4:8'")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(
            f"pattern={pattern!r} is invalid: N:M needs 0 < N < M (N pruned of every M), got N={n}, M={m}"
        )
    return n, m


class NonFiniteScoresError(ValueError):
    """Scores (or the weights, statistics or gradients they are made of) hold NaN or infinite values: such a score
    has no place in the order, so no mask can be chosen from it."""


def check_finite(values: torch.Tensor, what: str = "scores", allow_inf: bool = False) -> None:
    """Raise `NonFiniteScoresError` counting the NaN (and, unless `allow_inf`, infinite) entries of `values`.
    `allow_inf`: +-inf sort like any number (fp16 score mode turns large products into inf, as the reference does)."""
    bad = torch.isnan(values) if allow_inf else ~torch.isfinite(values)
    if bool(bad.any()):
        nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
        raise NonFiniteScoresError(
            f"{what} hold {nan} NaN and {inf} infinite value(s) out of {values.numel()}: the weights, calibration "
            "statistics or gradients are not finite (check the model's dtype and the calibration data)"
        )


def prune_count(size: int, sparsity: float) -> int:
    """Number of weights pruned out of `size` for a target `sparsity` (floor, with a guard against 0.7*10=6.999...)."""
    return int(size * sparsity + 1e-9)


def select_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the `k` lowest entries along the last dim; ties at the threshold go to the lower index.

    Linear time: the k-th value is the threshold, everything strictly below it is pruned, and the remaining
    budget is filled with threshold-equal entries in index order (the same result as a stable sort).
    """
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= scores.shape[-1]:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, k, dim=-1, keepdim=True).values
    below = scores < threshold
    ties = scores == threshold
    budget = k - below.sum(dim=-1, keepdim=True)
    return below | (ties & (torch.cumsum(ties, dim=-1) <= budget))


def select_rows(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per output row: prune exactly `floor(d_in * sparsity)` lowest scores of every row."""
    return select_lowest(scores, prune_count(scores.shape[-1], sparsity))


def select_layer(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """One group over the whole matrix: prune exactly `floor(numel * sparsity)` lowest scores."""
    flat = select_lowest(scores.reshape(-1), prune_count(scores.numel(), sparsity))
    return flat.reshape(scores.shape)


def select_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M along the input dimension: in every row, prune the `n` lowest of each `m` consecutive columns."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M pattern with M={m} needs an input dimension divisible by {m}, got {cols}")
    grouped = scores.reshape(rows, cols // m, m)
    return select_lowest(grouped, n).reshape(rows, cols)


def select_mask(
    scores: torch.Tensor, sparsity: float, pattern: str = "unstructured", group: str = "row", allow_inf: bool = False
) -> torch.Tensor:
    """Choose the prune mask of a 2-D score matrix for a pattern ("unstructured" or "N:M") and group (row/layer).
    NaN scores (and infinite ones unless `allow_inf`) raise `NonFiniteScoresError`."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be a 2-D [d_out, d_in] matrix, got shape {tuple(scores.shape)}")
    check_finite(scores, allow_inf=allow_inf)
    nm = parse_pattern(pattern)
    if nm is not None:
        return select_nm(scores, *nm)
    if group == "row":
        return select_rows(scores, sparsity)
    if group == "layer":
        return select_layer(scores, sparsity)
    raise ValueError(f"group={group!r} is invalid: choose row or layer")


def check_pattern(weight: torch.Tensor, pattern: str) -> bool:
    """True when every row-group of M consecutive inputs holds at most M-N non-zeros (always True unstructured)."""
    nm = parse_pattern(pattern)
    if nm is None:
        return True
    n, m = nm
    rows, cols = weight.shape
    if cols % m:
        return False
    nonzero = (weight.reshape(rows, cols // m, m) != 0).sum(dim=-1)
    return bool((nonzero <= m - n).all())


def sparsity_of(weight: torch.Tensor) -> float:
    return float((weight == 0).sum().item()) / weight.numel()


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask as bits, 8 per byte (1/8 of the bool tensor's memory), for keeping masks after pruning."""
    flat = mask.detach().reshape(-1).to(device="cpu", dtype=torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (flat.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The boolean mask of `pack_mask`, reshaped to `shape`."""
    bits = (packed.reshape(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1
    numel = 1
    for size in shape:
        numel *= size
    return bits.reshape(-1)[:numel].bool().reshape(shape)
