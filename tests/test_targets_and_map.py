"""Prune targets, input sites, input statistics and the pruning map (the saved state), format-1 side-cars included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from optimum_gblm import GBLMConfig, GBLMPruner, verify_checkpoint
from optimum_gblm.adapters import get_adapter
from optimum_gblm.masks import pack_mask, prune_count, unpack_mask
from optimum_gblm.methods import TargetJob, get_method
from optimum_gblm.pruning_map import PruningMap, Stage
from optimum_gblm.publishing.sidecar import SIDECAR_FORMAT, read_sidecar, upgrade_sidecar
from optimum_gblm.statistics import InputStatistics
from optimum_gblm.targets import PruneTarget, group_by_site, linear_target, target_modules
from tests.conftest import tiny_model
from tests.test_timm_vit import tiny_vit

GOLDEN_V1 = Path(__file__).parent / "golden" / "llama-gblm-obs"


def _cfg(method: str = "wanda", **kwargs) -> GBLMConfig:
    return GBLMConfig(method=method, num_samples=4, seqlen=16, device="cpu", **kwargs)


class Experts(nn.Module):
    """A stack of 4 expert matrices [4, d_out=8, d_in=16] in one 3-D parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(0)))


# -- targets ----------------------------------------------------------------------------------------------------------
def test_linear_target_weight_is_a_view_that_writes_through():
    linear = nn.Linear(8, 4)
    target = linear_target("block.linear", linear)
    assert target.input_site == "block.linear" and target.parameter is linear.weight
    assert target.shape == (4, 8) and target.in_features == 8
    view = target.weight()
    assert view.data_ptr() == linear.weight.data_ptr()
    view[1, 2] = 0.0
    view[3].zero_()
    assert linear.weight[1, 2] == 0 and (linear.weight[3] == 0).all()
    assert target_modules([target]) == {"block.linear": linear}


def test_indexed_target_is_a_2d_slice_of_a_3d_parameter():
    experts = Experts()
    before = experts.weight.detach().clone()
    target = PruneTarget("experts.2", experts, "experts.input", index=2)
    assert target.shape == (8, 16) and torch.equal(target.weight(), before[2])
    # a method prunes the slice in place: the parameter changes in slice 2 only
    job = TargetJob("experts.2", target.weight(), 0.5, "unstructured", "layer", get_method("magnitude").make_args())
    get_method("magnitude").prune(job)
    assert int((experts.weight[2] == 0).sum()) == prune_count(8 * 16, 0.5)
    kept = experts.weight[2] != 0
    assert torch.equal(experts.weight[2][kept], before[2][kept])
    for other in (0, 1, 3):
        assert torch.equal(experts.weight[other], before[other]), other
    # the gradient pass hooks the 3-D parameter and folds this slice of its gradient under the target's name
    assert target_modules([target]) == {"experts.2": target}
    whole = PruneTarget("experts", experts, "experts.input")
    with pytest.raises(ValueError, match=r"experts: a prune target needs a 2-D weight view, got shape \(4, 8, 16\)"):
        whole.weight()
    with pytest.raises(ValueError, match="2-D"):
        _ = PruneTarget("bias", nn.Linear(4, 4), "x", param_name="bias").shape


def test_group_by_site_keeps_first_seen_order():
    linears = {name: nn.Linear(4, 4) for name in "abcde"}
    sites = ["s2", "s1", "s2", "s3", "s1"]
    targets = [linear_target(name, linears[name], site) for name, site in zip("abcde", sites)]
    grouped = group_by_site(targets)
    assert list(grouped) == ["s2", "s1", "s3"]
    assert {site: [t.name for t in members] for site, members in grouped.items()} == {
        "s2": ["a", "c"],
        "s1": ["b", "e"],
        "s3": ["d"],
    }


def test_decoder_block_has_four_input_sites_for_seven_targets():
    model = tiny_model()
    per_block = get_adapter(model).targets_by_block(model)
    assert len(per_block) == 2
    for index, targets in enumerate(per_block):
        prefix = f"model.layers.{index}"
        assert len(targets) == 7
        sites = {
            site: [t.name.removeprefix(prefix + ".") for t in members]
            for site, members in group_by_site(targets).items()
        }
        assert sites == {
            f"{prefix}.self_attn.input": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            f"{prefix}.self_attn.o_proj": ["self_attn.o_proj"],
            f"{prefix}.mlp.input": ["mlp.gate_proj", "mlp.up_proj"],
            f"{prefix}.mlp.down_proj": ["mlp.down_proj"],
        }


def test_vit_block_has_one_input_site_per_target():
    model = tiny_vit()
    targets = get_adapter(model).targets_by_block(model)[0]
    assert [t.name for t in targets] == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
    ]
    sites = group_by_site(targets)
    assert len(sites) == 4 and all(len(members) == 1 for members in sites.values())
    assert [t.input_site for t in targets] == [t.name for t in targets]


# -- input statistics -----------------------------------------------------------------------------------------------
def test_statistics_formulas_and_kinds():
    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(0))
    act, hess = InputStatistics(6, "activations"), InputStatistics(6, "hessian")
    for stats in (act, hess):
        stats.add_batch(x[:2])
        stats.add_batch(x[2])  # a 2-D input is one sample
    assert act.nsamples == hess.nsamples == 3
    flat = x.reshape(-1, 6)
    torch.testing.assert_close(act.activation_sq_mean(), (flat**2).sum(0) / 3)
    torch.testing.assert_close(hess.hessian(), 2 * flat.t() @ flat / 3)
    torch.testing.assert_close(hess.activation_sq_mean(), act.activation_sq_mean())
    with pytest.raises(RuntimeError, match="activation norms, not a Hessian"):
        act.hessian()
    with pytest.raises(ValueError, match="unknown statistic 'gram'"):
        InputStatistics(6, "gram")
    with pytest.raises(RuntimeError, match="no calibration inputs"):
        InputStatistics(6, "activations").activation_sq_mean()


def test_derived_values_are_computed_once_and_cleared_by_add_batch_and_free():
    stats = InputStatistics(4, "hessian")
    stats.add_batch(torch.ones(1, 3, 4))
    calls = []

    def compute():
        calls.append(1)
        return stats.hessian().sum()

    first = stats.derived("key", compute)
    assert stats.derived("key", compute) is first and len(calls) == 1  # shared by every target of the site
    stats.derived("other", compute)
    assert len(calls) == 2
    stats.add_batch(torch.ones(1, 3, 4))  # new inputs: derived values are stale
    assert stats.derived("key", compute) == first and len(calls) == 3
    stats.free()
    with pytest.raises(RuntimeError, match="already freed"):
        stats.add_batch(torch.ones(1, 3, 4))
    with pytest.raises(RuntimeError):
        stats.hessian()
    with pytest.raises(RuntimeError):
        stats.derived("key", compute)  # recomputed (the cache was cleared), and the freed sums refuse
    assert len(calls) == 4


# -- the pruning map --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 5), (7, 13), (9, 17), (16, 8), (33, 3)])
@pytest.mark.parametrize("density", [0.0, 0.3, 0.5, 1.0])
def test_pack_unpack_round_trip(shape, density):
    generator = torch.Generator().manual_seed(shape[0] * 100 + shape[1])
    mask = torch.rand(shape, generator=generator) < density
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_mask(packed, shape), mask)


def test_map_masks_match_the_pruned_weights(calib_ids):
    model = tiny_model()
    pruner = GBLMPruner(model, _cfg("wanda", pattern="2:4"))
    pruner.prune(calibration=calib_ids, progress=False)
    pruning_map = pruner.pruning_map
    assert len(pruning_map.targets) == 14
    for name, record in pruning_map.targets.items():
        weight = model.get_submodule(name).weight
        mask = pruning_map.mask(name)
        assert mask.dtype == torch.bool and torch.equal(mask, weight == 0), name
        assert record.shape == tuple(weight.shape) and record.achieved_sparsity == 0.5 and record.pattern_ok
    assert pruning_map.targets["model.layers.1.self_attn.k_proj"].input_site == "model.layers.1.self_attn.input"
    with pytest.raises(KeyError, match="no mask kept"):
        pruning_map.mask("model.embed_tokens")


def test_map_has_one_prune_stage_with_method_and_settings(calib_ids):
    pruner = GBLMPruner(tiny_model(), _cfg("sparsegpt", method_args={"blocksize": 32}))
    pruner.prune(calibration=calib_ids, progress=False)
    (stage,) = pruner.pruning_map.stages
    assert stage == Stage(
        "prune",
        "sparsegpt",
        {"sparsity": 0.5, "pattern": "unstructured", "method_args": {"blocksize": 32, "percdamp": 0.01}},
    )
    data = pruner.pruning_map.to_dict()
    assert data["stages"] == [{"kind": "prune", "method": "sparsegpt", "settings": stage.settings}]
    again = PruningMap.from_dict(json.loads(json.dumps(data)))  # through JSON, as the side-car stores it
    assert again == pruner.pruning_map and again.to_dict() == data
    assert again.targets["model.layers.0.mlp.up_proj"].shape == (128, 64)  # a tuple again
    assert again.overall_sparsity == pytest.approx(pruner.pruning_map.overall_sparsity)


def test_saved_sidecar_is_format_2_with_the_pruning_map(tmp_path: Path):
    pruner = GBLMPruner(tiny_model(), _cfg("magnitude"))
    pruner.prune(progress=False)
    folder = pruner.save_pretrained(tmp_path / "ckpt", model_card=False)
    sidecar = json.loads((folder / "gblm_config.json").read_text())
    assert sidecar["format"] == SIDECAR_FORMAT == "optimum-gblm/2"
    assert sidecar["pruning_map"] == json.loads(json.dumps(pruner.pruning_map.to_dict()))
    assert sidecar["pruning_map"]["stages"][0]["method"] == "magnitude" and "sparsity" not in sidecar
    assert read_sidecar(folder) == sidecar  # format 2 is read as written
    result = verify_checkpoint(folder)
    assert result.ok and result.checked == 14


def test_format_1_sidecar_is_upgraded(tmp_path: Path):
    raw = json.loads((GOLDEN_V1 / "gblm_config.json").read_text())
    assert raw["format"] == "optimum-gblm/1"
    shutil.copy(GOLDEN_V1 / "gblm_config.json", tmp_path / "gblm_config.json")
    upgraded = read_sidecar(tmp_path)
    assert upgraded == upgrade_sidecar(raw) and upgrade_sidecar(upgraded) == upgraded
    assert upgraded["format"] == SIDECAR_FORMAT and upgraded["upgraded_from"] == "optimum-gblm/1"
    assert not {"sparsity", "sparsity_range"} & set(upgraded)
    config = upgraded["config"]
    assert config["method_args"] == {"blocksize": 128, "percdamp": 0.01, "beta": 1.0}
    assert not {"blocksize", "percdamp", "beta", "offload_activations"} & set(config)
    assert config["intermediates"] == "device" and GBLMConfig.from_dict(config).method == "gblm-obs"
    pruning_map = PruningMap.from_dict(upgraded["pruning_map"])
    report = raw["sparsity"]["layers"]
    assert set(pruning_map.targets) == set(report) and len(report) == 14
    for name, entry in report.items():
        record = pruning_map.targets[name]
        assert record.shape == tuple(entry["shape"]) and record.pattern == raw["sparsity"]["pattern"]
        assert record.target_sparsity == entry["target_sparsity"]
        assert record.achieved_sparsity == entry["achieved_sparsity"] and record.pattern_ok == entry["pattern_ok"]
    (stage,) = pruning_map.stages
    assert stage.kind == "prune" and stage.method == "gblm-obs" and stage.settings["sparsity"] == 0.5
    assert stage.settings["method_args"] == config["method_args"]  # the stage reads the upgraded config
    assert list(pruning_map.sparsity_range()) == pytest.approx(raw["sparsity_range"])


def _as_format_1(sidecar: dict, achieved_bonus: float = 0.0) -> dict:
    """A hand-written format-1 side-car for the same weights: flat method arguments and a `sparsity` report."""
    config = {k: v for k, v in sidecar["config"].items() if k not in ("method_args", "intermediates", "pipeline")}
    config.update(blocksize=128, percdamp=0.01, beta=1.0, offload_activations=False)
    layers = {
        name: {
            "shape": entry["shape"],
            "target_sparsity": entry["target_sparsity"],
            "achieved_sparsity": entry["achieved_sparsity"] + achieved_bonus,
            "pattern_ok": entry["pattern_ok"],
        }
        for name, entry in sidecar["pruning_map"]["targets"].items()
    }
    report = {"pattern": sidecar["pruning_map"]["pattern"], "layers": layers}
    keep = {k: v for k, v in sidecar.items() if k not in ("pruning_map", "config")}
    return {**keep, "format": "optimum-gblm/1", "config": config, "sparsity": report, "sparsity_range": [0.5, 0.5]}


def test_verify_checkpoint_reads_format_1_and_format_2(tmp_path: Path):
    pruner = GBLMPruner(tiny_model(), _cfg("magnitude", pattern="2:4"))
    pruner.prune(progress=False)
    folder = pruner.save_pretrained(tmp_path / "ckpt", model_card=False)
    assert verify_checkpoint(folder).ok
    sidecar = json.loads((folder / "gblm_config.json").read_text())
    (folder / "gblm_config.json").write_text(json.dumps(_as_format_1(sidecar)))
    result = verify_checkpoint(folder)
    assert result.ok and result.checked == 14, result.problems
    # the format-1 claims are really checked: an over-claimed sparsity is reported
    (folder / "gblm_config.json").write_text(json.dumps(_as_format_1(sidecar, achieved_bonus=0.1)))
    bad = verify_checkpoint(folder)
    assert not bad.ok and len(bad.problems) == 14 and "claimed 0.600000" in bad.problems[0]
