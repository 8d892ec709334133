"""The gradient allocation's global threshold: a bounded-memory radix selection that must give exactly the value
`kthvalue` of every saliency concatenated gave (the implementation before the radix selection), and so the same sparsities."""

import pytest
import torch

from optimum_gblm import allocation
from optimum_gblm.allocation import _saliency, global_threshold, gradient_allocation

SMOLLM2_SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]


def concatenated_threshold(weights, g2, sparsity):
    """The previous implementation: every saliency in one tensor, then kthvalue."""
    total = sum(w.numel() for w in weights.values())
    values = torch.cat([_saliency(w, g2[n]) for n, w in weights.items()])
    return float(values.kthvalue(max(1, int(total * sparsity))).values)


def bisection_threshold(weights, g2, sparsity, steps=60):
    """A deliberately inexact selection (the old path above 2e8 weights): bisection on counts."""
    total = sum(w.numel() for w in weights.values())
    k = max(1, int(total * sparsity))
    lo, hi = 0.0, max(float(_saliency(w, g2[n]).max()) for n, w in weights.items())
    for _ in range(steps):
        mid = (lo + hi) / 2
        below = sum(int((_saliency(w, g2[n]) <= mid).sum()) for n, w in weights.items())
        lo, hi = (mid, hi) if below < k else (lo, mid)
    return hi


def random_case(seed: int, shapes, kind: str):
    gen = torch.Generator().manual_seed(seed)
    weights, g2 = {}, {}
    for i, shape in enumerate(shapes):
        w = torch.randn(shape, generator=gen) * 0.02
        g = torch.rand(shape, generator=gen) ** 3 * 5
        if kind == "ties":  # few distinct values, exact zeros in both factors
            w = (torch.randn(shape, generator=gen) * 2).round() / 4
            g = (torch.rand(shape, generator=gen) * 3).floor()
        elif kind == "wide":  # saliencies over many binades, including subnormal products
            w = torch.randn(shape, generator=gen) * 10.0 ** torch.randint(-20, 5, shape, generator=gen)
        weights[f"layer{i}"], g2[f"layer{i}"] = w, g
    return weights, g2


CASES = [(seed, kind) for seed in range(4) for kind in ("smooth", "ties", "wide")]


@pytest.mark.parametrize(("seed", "kind"), CASES)
def test_threshold_equals_kthvalue_of_the_concatenation(seed, kind):
    gen = torch.Generator().manual_seed(100 + seed)
    shapes = [tuple(int(d) for d in torch.randint(1, 60, (2,), generator=gen)) for _ in range(6)]
    weights, g2 = random_case(seed, shapes, kind)
    for sparsity in (0.0, 0.01, 0.3, 0.5, 0.7, 0.999, 1.0):
        assert global_threshold(weights, g2, sparsity) == concatenated_threshold(weights, g2, sparsity)


@pytest.mark.parametrize("kind", ["smooth", "ties"])
def test_same_threshold_and_sparsities_at_real_model_shapes(kind, monkeypatch):
    """One block of SmolLM2-135M's matrix shapes (3.5M weights): threshold and every per-layer sparsity equal."""
    weights, g2 = random_case(7, SMOLLM2_SHAPES, kind)
    new = gradient_allocation(weights, g2, 0.5, gamma=0.5)
    assert global_threshold(weights, g2, 0.5) == concatenated_threshold(weights, g2, 0.5)
    monkeypatch.setattr(allocation, "global_threshold", concatenated_threshold)
    assert gradient_allocation(weights, g2, 0.5, gamma=0.5) == new  # identical floats, every layer
    assert len(set(new.values())) > 1  # the allocation is not uniform, so a wrong threshold would show


def test_an_inexact_selection_is_caught():
    """The comparison above is sharp: a bisection on counts (60 steps) misses the exact k-th value here."""
    weights, g2 = random_case(0, [(40, 30), (25, 50)], "wide")
    assert bisection_threshold(weights, g2, 0.5) != concatenated_threshold(weights, g2, 0.5)
    assert global_threshold(weights, g2, 0.5) == concatenated_threshold(weights, g2, 0.5)


def test_off_by_one_ranks_differ_so_the_rank_is_checked():
    weights, g2 = random_case(1, [(30, 30), (20, 10)], "smooth")
    total = 1100
    exact = concatenated_threshold(weights, g2, 0.5)
    values = torch.cat([_saliency(w, g2[n]) for n, w in weights.items()]).sort().values
    k = int(total * 0.5)
    assert float(values[k - 2]) != exact and float(values[k]) != exact
    assert global_threshold(weights, g2, 0.5) == exact


def test_non_finite_saliencies_sort_last_as_kthvalue_puts_them():
    weights = {"a": torch.tensor([[1.0, float("nan"), 2.0, float("inf"), -float("nan")]])}
    g2 = {"a": torch.ones(1, 5)}
    for sparsity in (0.2, 0.4, 0.6, 0.8, 1.0):
        got, want = global_threshold(weights, g2, sparsity), concatenated_threshold(weights, g2, sparsity)
        assert got == want or (got != got and want != want)


def test_no_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one target weight"):
        global_threshold({}, {}, 0.5)


def test_memory_is_one_matrix_not_the_concatenation(monkeypatch):
    """No tensor larger than one matrix is built: torch.cat is never called."""
    weights, g2 = random_case(2, SMOLLM2_SHAPES, "smooth")

    def no_cat(*args, **kwargs):
        raise AssertionError("global_threshold concatenated the saliencies")

    monkeypatch.setattr(torch, "cat", no_cat)
    assert global_threshold(weights, g2, 0.5) > 0
