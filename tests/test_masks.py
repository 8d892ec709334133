"""Hand-computed oracles for the mask selection kernels."""

import pytest
import torch

from optimum_gblm.masks import check_pattern, prune_count, select_layer, select_mask, select_nm, select_rows


def test_nm_row_of_eight_known_answer():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 9.0, 0.1, 7.0]])
    mask = select_nm(scores, 2, 4)
    # group 1 (4,1,3,2): prune 1 and 2; group 2 (0.5,9,0.1,7): prune 0.1 and 0.5
    assert mask.tolist() == [[False, True, False, True, True, False, True, False]]


def test_4_8_known_answer():
    scores = torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    assert select_nm(scores, 4, 8).tolist() == [[False] * 4 + [True] * 4]


def test_rows_exact_counts_and_lowest():
    torch.manual_seed(0)
    scores = torch.rand(7, 10)
    mask = select_rows(scores, 0.35)  # floor(10 * 0.35) = 3 per row
    assert (mask.sum(dim=1) == 3).all()
    for row in range(7):
        pruned, kept = scores[row][mask[row]], scores[row][~mask[row]]
        assert pruned.max() <= kept.min()


def test_layer_group_exact_count():
    scores = torch.arange(30, dtype=torch.float32).reshape(3, 10)
    mask = select_layer(scores, 0.5)
    assert int(mask.sum()) == 15
    assert mask.reshape(-1)[:15].all() and not mask.reshape(-1)[15:].any()


def test_ties_break_to_lower_index():
    scores = torch.ones(2, 8)
    assert select_rows(scores, 0.5).tolist() == [[True] * 4 + [False] * 4] * 2
    assert select_nm(scores, 2, 4).tolist() == [[True, True, False, False] * 2] * 2
    assert select_layer(scores, 0.25).reshape(-1).nonzero().reshape(-1).tolist() == [0, 1, 2, 3]


def test_prune_count_floor_is_robust_to_float_error():
    assert prune_count(10, 0.7) == 7
    assert prune_count(576, 0.5) == 288
    assert prune_count(3, 0.5) == 1


def test_nm_every_group_keeps_m_minus_n():
    torch.manual_seed(1)
    scores = torch.randn(16, 64)
    for n, m in [(2, 4), (4, 8), (1, 4)]:
        mask = select_mask(scores, n / m, f"{n}:{m}")
        assert (mask.reshape(16, 64 // m, m).sum(-1) == n).all()
        weight = torch.randn(16, 64).masked_fill(mask, 0)
        assert check_pattern(weight, f"{n}:{m}")


def test_nm_rejects_indivisible_dim():
    with pytest.raises(ValueError, match="divisible by 4"):
        select_nm(torch.rand(2, 6), 2, 4)


def test_check_pattern_detects_violation():
    weight = torch.ones(1, 8)
    weight[0, :2] = 0
    assert not check_pattern(weight, "2:4")
    weight[0, 4:6] = 0
    assert check_pattern(weight, "2:4")


def test_linear_time_selection_equals_stable_sort_with_ties():
    from optimum_gblm.masks import select_lowest

    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        shape = [(7, 13), (1, 50), (3, 4, 8), (64,)][trial % 4]
        scores = torch.randint(0, 3 if trial % 2 else 1000, shape, generator=gen).float()  # many ties when odd
        k = int(torch.randint(0, shape[-1] + 1, (1,), generator=gen))
        oracle = torch.zeros_like(scores, dtype=torch.bool)
        oracle.scatter_(-1, torch.sort(scores, dim=-1, stable=True).indices[..., :k], True)
        assert torch.equal(select_lowest(scores, k), oracle), (trial, shape, k)
