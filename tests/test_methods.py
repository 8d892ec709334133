"""Metric oracles per method, SparseGPT's OBS properties, gblm-obs and the gradient allocation."""

import copy

import pytest
import torch

from optimum_gblm import GBLMConfig, GBLMPruner
from optimum_gblm.allocation import gradient_allocation
from optimum_gblm.methods import TargetJob, get_method
from optimum_gblm.methods.sparsegpt import inverse_hessian_factor, obs_prune
from optimum_gblm.statistics import InputStatistics


def _job(method, weight, x=None, gradient=None, kind="activations", **cfg):
    stats = None
    if x is not None:
        stats = InputStatistics(weight.shape[1], kind)
        for sample in x:
            stats.add_batch(sample.unsqueeze(0))
    config = GBLMConfig(method=method, **cfg)
    return TargetJob(
        "layer",
        weight,
        config.sparsity,
        config.pattern,
        config.effective_group,
        config.args,
        stats,
        gradient,
        config.score_dtype,
    )


def _obs(weight, stats, sparsity, nm, blocksize, percdamp=0.01):
    return obs_prune(weight, inverse_hessian_factor(stats.hessian(), percdamp), sparsity, nm, blocksize)


def test_activation_statistic_is_mean_over_samples_of_token_sums():
    x = torch.tensor([[[1.0, 2.0], [3.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])  # 2 samples x 2 tokens x 2 features
    stats = InputStatistics(2, "activations")
    for sample in x:
        stats.add_batch(sample.unsqueeze(0))
    # a_j = (1/N) sum_n sum_t x^2 = ([1+9+0+1], [4+0+1+1]) / 2
    assert torch.allclose(stats.activation_sq_mean(), torch.tensor([5.5, 3.0]))
    hstats = InputStatistics(2, "hessian")
    for sample in x:
        hstats.add_batch(sample.unsqueeze(0))
    flat = x.reshape(-1, 2)
    assert torch.allclose(hstats.hessian(), 2 / 2 * flat.T @ flat)


def test_metrics_match_formulas():
    torch.manual_seed(0)
    weight = torch.randn(4, 8)
    x = torch.randn(3, 5, 8)
    grad = torch.rand(4, 8)
    a = (x**2).sum(dim=(0, 1)) / 3
    expected = {
        "magnitude": weight.abs(),
        "wanda": weight.abs() * a.sqrt(),
        "gradient": weight.abs() * grad,
        "gblm": weight.abs() * a.sqrt() + weight.abs() * grad,
    }
    for name, oracle in expected.items():
        job = _job(name, weight.clone(), x, grad)
        assert torch.allclose(get_method(name).score(job), oracle, rtol=1e-6), name


def test_row_pruning_prunes_lowest_scores_per_row():
    weight = torch.tensor([[1.0, -4.0, 2.0, 3.0], [0.5, 0.1, -9.0, 2.0]])
    job = _job("magnitude", weight, group="row")
    get_method("magnitude").prune(job)
    assert weight.tolist() == [[0.0, -4.0, 0.0, 3.0], [0.0, 0.0, -9.0, 2.0]]


def test_fp16_score_mode_mimics_reference_precision():
    weight = torch.full((1, 4), 1e-3)
    grad = torch.full((1, 4), 1e-5)
    fp32 = get_method("gradient").score(_job("gradient", weight, gradient=grad))
    fp16 = get_method("gradient").score(_job("gradient", weight, gradient=grad, score_dtype="float16"))
    assert fp32.min() > 0 and fp16.max() == 0  # 1e-8 underflows in half precision


def _reconstruction_error(w_old, w_new, x):
    return float(((x @ w_old.T - x @ w_new.T) ** 2).sum())


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_beats_plain_masking_on_reconstruction(pattern):
    torch.manual_seed(0)
    weight = torch.randn(32, 64)
    x = torch.randn(256, 64) * torch.linspace(0.1, 3, 64)
    stats = InputStatistics(64, "hessian")
    stats.add_batch(x.unsqueeze(0))
    w_obs = weight.clone()
    # One block spans the matrix: SparseGPT's per-block budget then matches Wanda's freedom.
    mask = _obs(w_obs, stats, 0.5, None if pattern == "unstructured" else (2, 4), blocksize=64)
    assert int(mask.sum()) == 32 * 32 and torch.equal(w_obs == 0, mask)
    w_wanda = weight.clone()
    job = _job("wanda", w_wanda, x.unsqueeze(0), pattern=pattern)
    get_method("wanda").prune(job)
    assert _reconstruction_error(weight, w_obs, x) < _reconstruction_error(weight, w_wanda, x)


def test_sparsegpt_lazy_blocks_equal_small_blocks_for_nm():
    torch.manual_seed(2)
    weight = torch.randn(8, 32)
    x = torch.randn(64, 32)
    stats = InputStatistics(32, "hessian")
    stats.add_batch(x.unsqueeze(0))
    a, b = weight.clone(), weight.clone()
    _obs(a, stats, 0.5, (2, 4), blocksize=32)
    _obs(b, stats, 0.5, (2, 4), blocksize=4)
    assert torch.allclose(a, b, atol=1e-5)


def test_sparsegpt_dead_inputs_are_zeroed_and_exact_count_at_odd_sparsity():
    weight = torch.randn(6, 20)
    x = torch.randn(40, 20)
    x[:, 3] = 0
    stats = InputStatistics(20, "hessian")
    stats.add_batch(x.unsqueeze(0))
    mask = _obs(weight, stats, 0.7, None, blocksize=8)
    assert (weight[:, 3] == 0).all()
    assert int(mask.sum()) == int(120 * 0.7)


def test_allocation_mean_is_exact_and_clip_holds():
    torch.manual_seed(0)
    weights = {f"l{i}": torch.randn(16 * (i + 1), 32) for i in range(6)}
    g2 = {n: torch.rand_like(w) ** (3 + int(n[1:])) for n, w in weights.items()}  # very uneven saliency
    alloc = gradient_allocation(weights, g2, 0.5, gamma=0.9, clip=0.2)
    sizes = {n: w.numel() for n, w in weights.items()}
    mean = sum(alloc[n] * sizes[n] for n in alloc) / sum(sizes.values())
    assert abs(mean - 0.5) < 1e-12
    assert all(0.3 - 1e-12 <= s <= 0.7 + 1e-12 for s in alloc.values())
    assert max(alloc.values()) - min(alloc.values()) > 0.05  # it does move layers apart
    flat = gradient_allocation(weights, g2, 0.5, gamma=0.0)
    assert all(abs(s - 0.5) < 1e-12 for s in flat.values())


def test_gblm_obs_with_zero_beta_and_gamma_equals_sparsegpt(tiny_llama, calib_ids):
    runs = {}
    for name, cfg in {
        "sparsegpt": GBLMConfig(method="sparsegpt", num_samples=4, seqlen=16, device="cpu"),
        "gblm-obs": GBLMConfig(
            method="gblm-obs", method_args={"beta": 0.0}, gamma=0.0, num_samples=4, seqlen=16, device="cpu"
        ),
    }.items():
        pruner = GBLMPruner(copy.deepcopy(tiny_llama), cfg)
        pruner.prune(calibration=calib_ids, progress=False)
        runs[name] = pruner.model.state_dict()
    assert all(torch.equal(runs["sparsegpt"][k], runs["gblm-obs"][k]) for k in runs["sparsegpt"])


def test_gblm_obs_gradient_term_changes_masks(tiny_llama, calib_ids):
    base = GBLMConfig(method="sparsegpt", num_samples=4, seqlen=16, device="cpu")
    obs = GBLMConfig(
        method="gblm-obs", allocation="uniform", method_args={"beta": 1.0}, num_samples=4, seqlen=16, device="cpu"
    )
    a, b = GBLMPruner(copy.deepcopy(tiny_llama), base), GBLMPruner(copy.deepcopy(tiny_llama), obs)
    a.prune(calibration=calib_ids, progress=False)
    b.prune(calibration=calib_ids, progress=False)
    assert b.pruning_map.overall_sparsity == pytest.approx(0.5)
    wa, wb = a.model.model.layers[0].mlp.up_proj.weight, b.model.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(wa == 0, wb == 0)
