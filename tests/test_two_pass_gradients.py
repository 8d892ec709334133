"""`two_pass_gradients`: gblm-obs's allocation (l2) and selection (l1) accumulations collected in two passes, one
accumulator held at a time, with the same sparsities, masks and weights as the single pass."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace

import pytest
import torch

import optimum_gblm.gradient_phase as phase
import optimum_gblm.pruner as pruner_module
from optimum_gblm import GBLMConfig, GBLMPruner
from optimum_gblm.adapters import get_adapter
from optimum_gblm.gradients import gradient_passes, required_norms
from optimum_gblm.planning import ModelShape, plan
from tests.conftest import tiny_model


def _config(**overrides) -> GBLMConfig:
    return GBLMConfig(method="gblm-obs", device="cpu", num_samples=4, seqlen=16, sparsity=0.5, **overrides)


def _pruned(calib_ids, **overrides) -> GBLMPruner:
    pruner = GBLMPruner(tiny_model("llama"), _config(**overrides))
    pruner.prune(calib_ids, progress=False)
    return pruner


def test_two_passes_give_the_same_sparsities_masks_and_weights(calib_ids):
    one, two = _pruned(calib_ids), _pruned(calib_ids, two_pass_gradients=True)
    assert one.sparsities and two.sparsities == one.sparsities  # the gradient allocation, exactly
    assert len(set(one.sparsities.values())) > 1  # not a uniform allocation that any run would match
    assert set(two.pruning_map.targets) == set(one.pruning_map.targets)
    for name in one.pruning_map.targets:
        assert torch.equal(two.pruning_map.mask(name), one.pruning_map.mask(name)), name
    for (name, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert two.gradients.norms == ("l1",) and one.gradients.norms == ("l1",)  # l2: let go after the allocation
    for name, total in one.gradients.l1.items():  # the selection's sums: the same folds in the same order
        assert torch.equal(two.gradients.l1[name], total), name
    assert two.timings["gradients_s"] > 0 and "allocation_s" in two.timings


def test_one_accumulator_is_held_at_a_time(calib_ids, monkeypatch):
    pruner = GBLMPruner(tiny_model("llama"), _config(two_pass_gradients=True))
    seen, results = [], []
    collect = phase.run_collection

    def spy(*args, **kwargs):
        gc.collect()  # what is still referenced when a pass starts: the pruner's or an earlier pass's sums
        seen.append((kwargs["norms"], pruner.gradients, [alive() for alive in results]))
        accumulation = collect(*args, **kwargs)
        results.append(weakref.ref(accumulation))
        return accumulation

    monkeypatch.setattr(phase, "run_collection", spy)
    pruner.prune(calib_ids, progress=False)
    assert [norms for norms, _, _ in seen] == [("l2",), ("l1",)]
    assert all(held is None for _, held, _ in seen)
    assert seen[1][2] == [None]  # the l2 accumulation was let go before the l1 pass started


def test_gradient_passes_of_each_config():
    assert gradient_passes(_config()) == [("l1", "l2")]
    assert gradient_passes(_config(two_pass_gradients=True)) == [("l2",), ("l1",)]
    assert gradient_passes(GBLMConfig(method="gblm")) == [("l1",)]


@pytest.mark.parametrize(
    "overrides",
    [
        {"method": "gblm"},  # one accumulation (l1)
        {"method": "wanda"},  # no gradients
        {"method": "gblm-obs", "allocation": "uniform"},  # no l2 for the allocation
        {"method": "gblm-obs", "gradient_norm": "l2"},  # both needs are the one l2 accumulation
        {"method": "gblm-obs", "pattern": "2:4"},  # N:M allocation is uniform
        {"method": "wanda", "allocation": "gradient"},  # its selection reads no gradients: l2 only
        {"method": "sparsegpt", "allocation": "gradient"},
    ],
)
def test_two_passes_are_refused_where_one_accumulator_is_all_there_is(overrides):
    with pytest.raises(ValueError, match="two_pass_gradients=True splits a gradient pass that keeps two"):
        GBLMConfig(device="cpu", two_pass_gradients=True, **overrides).validate()


def test_two_passes_with_a_gradient_cache_are_refused_before_any_pass(calib_ids, tmp_path, monkeypatch):
    pruner = GBLMPruner(tiny_model("llama"), _config(two_pass_gradients=True))
    monkeypatch.setattr(phase, "run_collection", lambda *a, **k: pytest.fail("a gradient pass ran"))
    with pytest.raises(ValueError, match="two_pass_gradients=True cannot use a gradient cache"):
        pruner.prune(calib_ids, gradients=tmp_path / "grads.safetensors", progress=False)
    assert not (tmp_path / "grads.safetensors").exists() and pruner.pruning_map is None


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_gradient_allocation_alone_collects_only_the_l2_sums(method, calib_ids):
    config = GBLMConfig(method=method, allocation="gradient", device="cpu", num_samples=4, seqlen=16, sparsity=0.5)
    assert required_norms(config) == ("l2",) and gradient_passes(config) == [("l2",)]
    pruner = GBLMPruner(tiny_model("llama"), config)
    pruner.prune(calib_ids, progress=False)
    assert pruner.gradients.norms == ()  # no l1 accumulator that nothing reads; the l2 one let go after allocating
    assert len(set(pruner.sparsities.values())) > 1  # the allocation still ran from the l2 sums
    uniform = replace(config, allocation="uniform")  # no gradient pass in its pruning; asked for one, it gives l1
    assert not uniform.needs_gradients and required_norms(uniform) == ("l1",)


def test_pruning_lets_go_of_the_allocation_sums_but_not_of_a_callers(calib_ids, monkeypatch):
    pruner = GBLMPruner(tiny_model("llama"), _config())
    seen = []
    real = pruner_module.allocate

    def spy(subject, accumulation):
        seen.append(accumulation.norms)  # both sums when the allocation is made
        return real(subject, accumulation)

    monkeypatch.setattr(pruner_module, "allocate", spy)
    pruner.prune(calib_ids, progress=False)
    assert seen == [("l1", "l2")] and pruner.gradients.norms == ("l1",)
    # An accumulation passed in by the caller is not changed: the pruner only stops holding its l2 sums.
    other = GBLMPruner(tiny_model("llama"), _config())
    other.calibration_data(calib_ids)
    given = other.collect_gradients(progress=False)
    third = GBLMPruner(tiny_model("llama"), _config())
    third.prune(calib_ids, gradients=given, progress=False)
    assert given.norms == ("l1", "l2") and third.gradients.norms == ("l1",)
    assert third.sparsities == pruner.sparsities  # the same allocation from the same sums
    l2_selection = GBLMPruner(tiny_model("llama"), _config(gradient_norm="l2"))
    l2_selection.prune(calib_ids, progress=False)
    assert l2_selection.gradients.norms == ("l2",)  # the selection reads them: kept


def test_the_plan_counts_the_accumulators_pruning_reads():
    model = tiny_model("llama")
    adapter = get_adapter(model)
    params = ModelShape.of(model, adapter, _config()).target_params

    def held(config: GBLMConfig) -> int:
        return plan(model, adapter, config, device_type="cpu").phase("prune", "memory / device").terms["gradients"]

    wanda = dict(device="cpu", num_samples=4, seqlen=16, sparsity=0.5)
    assert held(_config()) == params * 4  # the l1 sums; the l2 ones are let go after the allocation
    assert held(_config(two_pass_gradients=True)) == params * 4
    assert held(_config(gradient_norm="l2")) == params * 4  # one l2 accumulation serves both
    assert held(GBLMConfig(method="wanda", allocation="gradient", **wanda)) == 0  # l2 only, let go after allocating
    assert held(GBLMConfig(method="wanda", **wanda)) == 0


def test_the_setting_does_not_change_the_fingerprint_and_round_trips():
    config = _config(two_pass_gradients=True)
    assert config.fingerprint() == _config().fingerprint()
    assert GBLMConfig.from_dict(config.to_dict()).two_pass_gradients is True


def test_the_plan_holds_one_accumulator_and_offers_two_passes():
    model = tiny_model("llama")
    adapter = get_adapter(model)
    one = plan(model, adapter, _config(), device_type="cpu")
    two = plan(model, adapter, _config(two_pass_gradients=True), device_type="cpu")
    single, split = one.phase("gradients", "on device"), two.phase("gradients", "two_pass_gradients")
    assert split.terms["accumulators"] * 2 == single.terms["accumulators"]
    assert split.seconds == pytest.approx(2 * single.seconds)
    # Offered when the single pass does not fit, alone and with checkpointing.
    assert one.phase("gradients", "two_pass_gradients") == split
    assert one.phase("gradients", "two_pass_gradients + gradient_checkpointing").host < split.host
    gblm = plan(model, adapter, GBLMConfig(method="gblm", device="cpu", num_samples=4, seqlen=16), device_type="cpu")
    assert not any("two_pass" in p.option for p in gblm.phases)  # nothing to split
