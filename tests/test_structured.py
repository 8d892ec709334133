"""Structured pruning on tiny LLaMA models with GQA and tied embeddings: real removal equals masking plus the
compensation bias, checkpoints reload (plain transformers / load_pruned), GQA grouping, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from optimum_gblm import GBLMConfig, GBLMPruner, load_pruned, verify_checkpoint
from optimum_gblm.statistics import InputStatistics
from tests.conftest import tiny_model
from tests.helpers.registries import restored

GQA = dict(num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=3)  # 4 query heads per group
CALIB = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))


def _cfg(method="flap", sparsity=0.3, **method_args):
    return GBLMConfig(
        method=method, sparsity=sparsity, num_samples=4, seqlen=16, device="cpu", method_args=method_args
    )


def _input_means(model) -> dict[str, torch.Tensor]:
    """Mean input of every o_proj / down_proj over the calibration tokens, measured independently of the package."""
    sums, handles = {}, []
    for name, module in model.named_modules():
        if name.endswith(("o_proj", "down_proj")):

            def hook(module, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                total, count = sums.get(name, (0, 0))
                sums[name] = (total + x.sum(0), count + x.shape[0])

            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for sample in CALIB:
            model(sample[None])
    for handle in handles:
        handle.remove()
    return {name: total / count for name, (total, count) in sums.items()}


def _masked(dense, pruning_map, means, compensate: bool):
    """The dense model with the removed heads / channels zeroed and the compensation added as a bias."""
    masked = copy.deepcopy(dense)
    for index, layer in enumerate(masked.model.layers):
        prefix = f"model.layers.{index}."
        q = pruning_map.targets[prefix + "self_attn.q_proj"].kept
        kv = pruning_map.targets[prefix + "self_attn.k_proj"].kept["kv_heads"]
        channels = pruning_map.targets[prefix + "mlp.down_proj"].kept["channels"]
        hd = q["head_dim"][0]
        attn, mlp = layer.self_attn, layer.mlp
        gone_q = [h * hd + d for h in range(attn.q_proj.out_features // hd) if h not in q["heads"] for d in range(hd)]
        gone_kv = [h * hd + d for h in range(attn.k_proj.out_features // hd) if h not in kv for d in range(hd)]
        gone_c = [c for c in range(mlp.down_proj.in_features) if c not in channels]
        with torch.no_grad():
            for lin, rows, cols, key in (
                (attn.q_proj, gone_q, None, None),
                (attn.k_proj, gone_kv, None, None),
                (attn.v_proj, gone_kv, None, None),
                (attn.o_proj, None, gone_q, prefix + "self_attn.o_proj"),
                (mlp.gate_proj, gone_c, None, None),
                (mlp.up_proj, gone_c, None, None),
                (mlp.down_proj, None, gone_c, prefix + "mlp.down_proj"),
            ):
                bias = torch.zeros(lin.out_features, dtype=torch.float64)
                if cols:
                    bias = lin.weight[:, cols].double() @ means[key][cols]
                    lin.weight[:, cols] = 0
                if rows:
                    lin.weight[rows] = 0
                if compensate and key is not None:
                    lin.bias = torch.nn.Parameter(bias.float())
    return masked


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("flap", {"mode": "adaptive", "attention_unit": "group"}),
        ("flap", {"mode": "uniform", "attention_unit": "head"}),
        ("flap", {"mode": "adaptive", "attention_unit": "head"}),
        ("wanda-sp", {}),
    ],
)
def test_removal_equals_masking_plus_compensation(method, args):
    dense = tiny_model("llama", **GQA)
    means = _input_means(dense)
    pruner = GBLMPruner(copy.deepcopy(dense), _cfg(method, 0.4, **args))
    pruned = pruner.prune(calibration=CALIB, progress=False)
    compensate = pruner.config.args.bias_compensation
    masked = _masked(dense, pruner.pruning_map, means, compensate)
    removed = sum(r.achieved_sparsity * r.numel for r in pruner.pruning_map.targets.values())
    assert abs(removed / pruner.pruning_map.total_params - 0.4) < 0.05
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in dense.parameters())
    with torch.no_grad():
        torch.testing.assert_close(pruned(CALIB).logits, masked(CALIB).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(pruned(CALIB).logits, dense(CALIB).logits, atol=1e-3)


def test_heads_respect_gqa_grouping():
    for unit in ("group", "head"):
        pruner = GBLMPruner(tiny_model("llama", **GQA), _cfg(sparsity=0.45, attention_unit=unit))
        pruner.prune(calibration=CALIB, progress=False)
        for index in range(3):
            heads = pruner.pruning_map.targets[f"model.layers.{index}.self_attn.q_proj"].kept["heads"]
            kv = pruner.pruning_map.targets[f"model.layers.{index}.self_attn.k_proj"].kept["kv_heads"]
            per_group = [sum(1 for h in heads if h // 4 == k) for k in range(2)]
            if unit == "group":  # whole groups: every kept kv head keeps its 4 query heads, no query head is orphaned
                assert per_group == [4 if k in kv else 0 for k in range(2)] and kv
            else:  # same number of query heads in every group, keys and values untouched
                assert kv == [0, 1] and len(set(per_group)) == 1 and per_group[0] >= 1
            attn = pruner.model.model.layers[index].self_attn
            assert attn.num_key_value_groups == len(heads) // len(kv)


def test_uniform_mode_reloads_with_plain_transformers(tmp_path):
    pruner = GBLMPruner(tiny_model("llama", **GQA), _cfg(sparsity=0.3, mode="uniform"))
    model = pruner.prune(calibration=CALIB, progress=False)
    folder = pruner.save_pretrained(tmp_path / "uniform")
    config = json.loads((folder / "config.json").read_text())
    assert "optimum_gblm_structure" not in config and config["attention_bias"] and config["mlp_bias"]
    reloaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(CALIB).logits, model(CALIB).logits)
    assert verify_checkpoint(folder).ok
    card = (folder / "README.md").read_text()
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert f"| Parameters | {params:,} (dense " in card and "MB" in card and "plain `transformers` reloads" in card
    assert load_pruned(folder).config.num_attention_heads == config["num_attention_heads"]
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    key = "model.layers.1.mlp.down_proj.weight"
    tensors[key] = tensors[key][:, :-1].contiguous()  # one channel fewer than the map says was kept
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    result = verify_checkpoint(folder)
    assert not result.ok and any("down_proj" in p and "kept" in p for p in result.problems)


def test_per_layer_widths_reload_through_load_pruned(tmp_path):
    pruner = GBLMPruner(tiny_model("llama", **GQA), _cfg(sparsity=0.4, mode="adaptive"))
    model = pruner.prune(calibration=CALIB, progress=False)
    widths = [layer.mlp.down_proj.in_features for layer in model.model.layers]
    assert len(set(widths)) > 1  # the adaptive mode gives blocks different widths on this model
    folder = pruner.save_pretrained(tmp_path / "adaptive")
    recorded = json.loads((folder / "config.json").read_text())["optimum_gblm_structure"]["layers"]
    assert [w["intermediate_size"] for w in recorded] == widths
    reloaded = load_pruned(folder)
    with torch.no_grad():
        assert torch.equal(reloaded(CALIB).logits, model(CALIB).logits)
    with pytest.raises(ValueError, match="optimum_gblm_structured"):  # refused, never silently re-initialised
        AutoModelForCausalLM.from_pretrained(folder)
    assert verify_checkpoint(folder).ok
    assert "load_pruned" in (folder / "README.md").read_text()


def test_gradient_informed_method_uses_the_gradients():
    pruner = GBLMPruner(tiny_model("llama", **GQA), _cfg("gblm-sp", 0.3, attention_unit="head"))
    pruner.prune(calibration=CALIB, progress=False)
    assert pruner.gradients is not None and pruner.pruning_map.pattern == "structured"
    flap = GBLMPruner(tiny_model("llama", **GQA), _cfg("flap", 0.3, attention_unit="head"))
    flap.prune(calibration=CALIB, progress=False)
    kept = [pruner.pruning_map.targets[n].kept for n in pruner.pruning_map.targets]
    assert kept != [flap.pruning_map.targets[n].kept for n in flap.pruning_map.targets]


def test_fluctuation_statistics():
    x = torch.randn(3, 50, 6) * 3 + 2
    stats = InputStatistics(6, "fluctuation")
    for sample in x:
        stats.add_batch(sample[None])
    flat = x.reshape(-1, 6).double()
    torch.testing.assert_close(stats.channel_mean(), flat.mean(0))
    torch.testing.assert_close(stats.channel_variance(), flat.var(0))
    torch.testing.assert_close(stats.activation_sq_mean(), (flat**2).sum(0).float() / 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.0}, "strictly between 0 and 1"),
        ({"sparsity": 0.0}, "strictly between 0 and 1"),
        ({"pattern": "2:4", "sparsity": 0.5}, "not available for the structured method"),
        ({"allocation": "gradient"}, "does not apply to the structured method"),
        ({"ignore": ["mlp"]}, "targets / ignore do not apply"),
        ({"placement": "disk"}, "placement='disk' does not apply to the structured method"),
        ({"method_args": {"mode": "global"}}, "mode='global' is invalid"),
        ({"method_args": {"attention_unit": "channel"}}, "attention_unit='channel' is invalid"),
        ({"method_args": {"min_mlp_keep": 1.0}}, "min_mlp_keep=1.0 is invalid"),
        (
            {"pipeline": "sequential"},
            "pipeline='sequential' does not apply to method='flap': it runs on the structured",
        ),
        ({"pipeline": "datafree"}, "pipeline='datafree' does not apply"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GBLMConfig(**{"method": "flap", **kwargs})


def test_bad_model_or_fraction_fails_before_heavy_work(monkeypatch):
    from optimum_gblm.structured import runner

    monkeypatch.setattr(runner, "collect_statistics", lambda *a, **k: pytest.fail("heavy work started"))
    with pytest.raises(ValueError, match="would empty blocks"):
        GBLMPruner(tiny_model("llama", **GQA), _cfg(sparsity=0.95))
    with pytest.raises(ValueError, match="cannot shrink this model \\(mistral\\) validly"):
        GBLMPruner(tiny_model("mistral"), _cfg())
    from tests.test_timm_vit import tiny_vit

    with pytest.raises(ValueError, match="cannot shrink this model"):
        GBLMPruner(tiny_vit(), _cfg())


def test_cli_prunes_structured_and_plain_transformers_reloads(tmp_path):
    from tests.helpers.tiny_models import save_tiny_llama, write_text
    from tests.test_cli import cli, ok, tiny_options

    assets = {"model": save_tiny_llama(tmp_path / "tiny-llama"), "text": write_text(tmp_path / "text.txt")}
    out = tmp_path / "flap-uniform"
    args = ("--method", "flap", "--mode", "uniform", "--attention-unit", "head", "--sparsity", "0.3", "--output", out)
    result = ok(cli("prune", *tiny_options(assets), *args))
    assert "Traceback" not in result.stderr and verify_checkpoint(out).ok
    config = json.loads((out / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == config["intermediate_size"] < 128
    bad = cli("prune", *tiny_options(assets), "--method", "flap", "--sparsity", "0.99", "--output", tmp_path / "x")
    assert bad.returncode != 0 and "would empty blocks" in bad.stderr and not (tmp_path / "x").exists()


# -- a structured method registered from outside the package --------------------------------------------------------
def test_a_structured_method_registered_outside_the_package_prunes_end_to_end(tmp_path):
    """A new structured method is one class: it declares nothing but its scores (the structured pipeline is picked
    from its declarations), prunes, saves and reloads like the built-in ones."""
    from optimum_gblm import register_method
    from optimum_gblm.methods import registry
    from optimum_gblm.methods.structured_units import StructuredMethod

    with restored(registry._REGISTRY):

        @register_method
        class WeightNormSP(StructuredMethod):
            name = "toy-weight-norm-sp"
            description = "structured: the L2 norm of each head's query rows and each channel's gate rows (a test)"
            card_description = "a test method that removes the heads and channels of smallest weight norm"

            def unit_scores(self, layer, args):
                q = layer.weights["self_attn.q_proj"].double()
                heads = q.reshape(-1, layer.head_dim * q.shape[1]).norm(dim=1)
                return heads, layer.weights["mlp.gate_proj"].double().norm(dim=1)

        model = tiny_model("llama", **GQA)
        dense = copy.deepcopy(model)
        pruner = GBLMPruner(model, _cfg(WeightNormSP.name, mode="uniform"))
        pruner.prune(CALIB, progress=False)
        assert pruner.pruning_map.pattern == "structured"
        assert pruner.pruning_map.stages[-1].method == WeightNormSP.name
        kept_channels = model.model.layers[0].mlp.gate_proj.out_features
        assert kept_channels < dense.model.layers[0].mlp.gate_proj.out_features
        # the kept channels are those of largest gate-row norm, in order
        norms = dense.model.layers[0].mlp.gate_proj.weight.double().norm(dim=1)
        expected = sorted(torch.argsort(norms, descending=True)[:kept_channels].tolist())
        assert pruner.pruning_map.targets["model.layers.0.mlp.gate_proj"].kept["channels"] == expected
        folder = pruner.save_pretrained(tmp_path / "toy")
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(CALIB).logits, model(CALIB).logits, rtol=0, atol=1e-5)
        assert WeightNormSP.card_description in (folder / "README.md").read_text()
