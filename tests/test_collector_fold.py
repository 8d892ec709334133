"""The collector's fused fold: bit-identical to the unfused arithmetic, no per-sample finite pass over
the gradients, and NaN / inf still fail clearly, naming the module and the samples."""

import copy

import pytest
import torch

from optimum_gblm.adapters import get_adapter
from optimum_gblm.gradients import GradientCollector, NonFiniteGradientError
from optimum_gblm.gradients import collector as collector_module
from optimum_gblm.gradients.collector import per_sample_backward

SCALE = 100.0
TARGET = "model.layers.1.mlp.up_proj"


def unfused(model, samples):
    """The arithmetic before the fused fold: g * c, then |.| and (.)^2 as new tensors, added in sample order."""
    targets = get_adapter(model).target_linears(model)
    l1 = {n: torch.zeros_like(m.weight) for n, m in targets.items()}
    l2sq = {n: torch.zeros_like(m.weight) for n, m in targets.items()}
    for ids in samples:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        for name, module in targets.items():
            g = module.weight.grad.to(torch.float32) * SCALE
            l1[name].add_(g.abs())
            l2sq[name].add_(g * g)
    model.zero_grad(set_to_none=True)
    return l1, l2sq


def collect(model, samples, every=16, step=None):
    adapter = get_adapter(model)
    targets = adapter.target_linears(model)
    step = step or (lambda s: model(input_ids=s, labels=s).loss)
    with GradientCollector(model, targets, norms=("l1", "l2"), scale=SCALE, finite_check_every=every) as col:
        for i, sample in enumerate(samples):
            per_sample_backward(col, lambda s=sample: step(s), i)
    return col.state


def test_fused_fold_is_bit_identical_to_the_unfused_arithmetic(tiny_llama, calib_ids):
    samples = [calib_ids[i : i + 1] for i in range(calib_ids.shape[0])]
    l1, l2sq = unfused(copy.deepcopy(tiny_llama), samples)
    state = collect(tiny_llama, samples)
    assert state.nsamples == len(samples)
    for name in l1:
        assert torch.equal(state.l1[name], l1[name]), name
        assert torch.equal(state.l2sq[name], l2sq[name]), name


def test_finite_check_is_amortised_not_one_pass_per_weight_per_sample(tiny_llama, calib_ids, monkeypatch):
    samples = [calib_ids[i % 4 : i % 4 + 1] for i in range(8)]
    calls = []
    real = torch.isfinite
    monkeypatch.setattr(collector_module.torch, "isfinite", lambda t: calls.append(t.numel()) or real(t))
    state = collect(tiny_llama, samples, every=4)
    accumulators = len(state.l1) + len(state.l2sq)
    # Two checks (after samples 3 and 7), each over every accumulator; the 8 losses are checked as one stack.
    assert sum(1 for n in calls if n > 8) == 2 * accumulators
    assert len(calls) == 2 * accumulators + 2


def nan_after(model, first_bad: int):
    """A step whose loss is finite but whose gradient of TARGET is NaN from sample `first_bad` on."""
    counter = {"i": 0}

    def step(sample):
        i = counter["i"]
        counter["i"] += 1
        loss = model(input_ids=sample, labels=sample).loss
        if i < first_bad:
            return loss
        weight = model.get_submodule(TARGET).weight
        return loss + 0 * torch.sqrt(weight - weight.detach()).sum()  # d sqrt(u)/du at 0 is inf; times 0: NaN

    return step


def test_nan_gradient_names_module_and_the_samples_since_the_last_check(tiny_llama, calib_ids):
    samples = [calib_ids[i % 4 : i % 4 + 1] for i in range(8)]
    with pytest.raises(NonFiniteGradientError, match=rf"module '{TARGET}' at calibration samples 4\.\.7"):
        collect(tiny_llama, samples, every=4, step=nan_after(tiny_llama, 5))


def test_nan_gradient_with_a_check_every_sample_names_the_sample(tiny_llama, calib_ids):
    samples = [calib_ids[i % 4 : i % 4 + 1] for i in range(8)]
    with pytest.raises(NonFiniteGradientError, match=rf"module '{TARGET}' at calibration sample 5 "):
        collect(tiny_llama, samples, every=1, step=nan_after(tiny_llama, 5))


def test_nan_in_the_last_samples_is_caught_on_exit(tiny_llama, calib_ids):
    """6 samples with a check every 4: the NaN of sample 5 is found when the collector closes."""
    samples = [calib_ids[i % 4 : i % 4 + 1] for i in range(6)]
    with pytest.raises(NonFiniteGradientError, match=r"samples 4\.\.5"):
        collect(tiny_llama, samples, every=4, step=nan_after(tiny_llama, 5))
    assert all(p.grad is None for p in tiny_llama.parameters())  # the model was restored before the error


def test_non_finite_loss_names_its_sample(tiny_llama, calib_ids):
    samples = [calib_ids[i : i + 1] for i in range(4)]

    def step(sample):
        loss = tiny_llama(input_ids=sample, labels=sample).loss
        return loss * float("inf") if sample is samples[2] else loss

    with pytest.raises(NonFiniteGradientError, match="non-finite loss .* at calibration sample 2"):
        collect(tiny_llama, samples, step=step)


def test_finite_check_every_must_be_positive(tiny_llama):
    targets = get_adapter(tiny_llama).target_linears(tiny_llama)
    with pytest.raises(ValueError, match="finite_check_every=0"):
        GradientCollector(tiny_llama, targets, finite_check_every=0)
