"""Every kind of output says what it is: the card (README.md), its tags and the side-car of an unstructured, N:M,
uniform structured, per-layer structured, recovered, dense and recovered-without-record checkpoint name its pattern,
title, load call, parameter count and lineage, and nothing they contradict."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import yaml

from optimum_gblm import GBLMConfig, GBLMPruner, verify_checkpoint
from optimum_gblm.publishing.sidecar import read_sidecar
from optimum_gblm.recovery import RecoveryConfig
from tests.helpers.tiny_models import save_tiny_llama, write_text

GQA = dict(num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=3)  # adaptive widths differ per block
BASE_ID = "example-org/tiny-llama"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("kinds")
    return {
        "base": save_tiny_llama(root / "tiny-llama", **GQA),
        "text": write_text(root / "text.txt", 400),
        "root": root,
    }


def _config(assets: dict, **settings) -> GBLMConfig:
    common = dict(calibration=str(assets["text"]), num_samples=4, seqlen=16, device="cpu")
    return GBLMConfig(**{**common, **settings})


def _quick(assets: dict) -> RecoveryConfig:
    return RecoveryConfig(
        source=str(assets["text"]), max_steps=2, batch_size=2, seqlen=16, num_windows=4, heldout_windows=1
    )


def _saved(assets: dict, name: str, base_model: str | None = None, **settings) -> tuple[GBLMPruner, Path]:
    pruner = GBLMPruner.from_pretrained(str(assets["base"]), _config(assets, **settings), base_model=base_model)
    pruner.prune(progress=False)
    return pruner, pruner.save_pretrained(assets["root"] / name, overwrite=True)


def _card(folder: Path) -> tuple[str, dict, str, str]:
    """(card text, front matter, title line, the "How to load" code)."""
    text = (folder / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---")[1])
    title = next(line for line in text.splitlines() if line.startswith("# "))
    usage = text.split("## How to load")[1].split("```")[1]
    return text, meta, title, usage


def _reproduce(text: str) -> str:
    return text.split("## Reproduce")[1].split("```")[1]


def test_unstructured(assets):
    _, folder = _saved(assets, "unstructured", method="wanda", sparsity=0.5)
    text, meta, title, usage = _card(folder)
    assert title == "# tiny-llama pruned with wanda (unstructured, 50%)"
    assert {"pruned", "sparse", "wanda", "unstructured-sparsity"} <= set(meta["tags"])
    assert "structured-pruning" not in meta["tags"] and "AutoModelForCausalLM.from_pretrained" in usage
    assert "load_pruned" not in text and "removed" not in text.split("## Pruning settings")[0]


def test_n_m(assets):
    _, folder = _saved(assets, "2of4", method="wanda", pattern="2:4")
    text, meta, title, usage = _card(folder)
    assert title == "# tiny-llama pruned with wanda (2:4, 50%)"
    assert "2of4-sparsity" in meta["tags"] and "unstructured-sparsity" not in meta["tags"]
    assert "satisfy the `2:4` pattern" in text and "AutoModelForCausalLM.from_pretrained" in usage


def _parameters(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("mode", ["uniform", "adaptive"])
def test_structured(assets, mode):
    pruner, folder = _saved(assets, f"flap-{mode}", method="flap", sparsity=0.3, method_args={"mode": mode})
    text, meta, title, usage = _card(folder)
    per_layer = mode == "adaptive"
    params = _parameters(pruner.model)
    removed = read_sidecar(folder)["pruning_map"]
    widths = "per-layer widths" if per_layer else "uniform widths"
    assert title == f"# tiny-llama structurally pruned with flap (30% of block weights removed, {widths})"
    assert {"pruned", "structured-pruning", "flap"} <= set(meta["tags"])
    assert not {"sparse", "unstructured-sparsity"} & set(meta["tags"])
    assert ("per-layer-widths" in meta["tags"]) == per_layer and ("uniform-widths" in meta["tags"]) != per_layer
    assert "unstructured" not in text  # no pattern row, no settings row, no check sentence names a mask pattern
    assert f"{removed['overall_sparsity']:.2%} of its blocks' linear weights removed" in text
    assert f"It has {params:,} parameters (dense " in text and f"| Parameters | {params:,} (dense " in text
    if per_layer:
        assert 'load_pruned("path/to/this/checkpoint")' in usage and "AutoModelForCausalLM" not in usage
        assert "Plain transformers" not in text and "loads with plain" not in text
    else:
        assert "AutoModelForCausalLM.from_pretrained" in usage and "load_pruned" not in usage
    stage = removed["stages"][0]
    assert removed["pattern"] == stage["settings"]["pattern"] == "structured"
    summary = str(pruner.pruning_map)
    assert "pattern=structured" in summary and "pattern=unstructured" not in summary
    assert f"parameters: {params:,} of " in summary and "'layers'" not in summary


def test_structured_prune_summary_names_parameters_and_the_reload_call(assets):
    from optimum_gblm.commands.prune import summary

    for mode, call in (
        ("adaptive", "optimum_gblm.load_pruned("),
        ("uniform", "transformers.AutoModelForCausalLM.from_pretrained("),
    ):
        pruner, folder = _saved(assets, f"cli-{mode}", method="flap", sparsity=0.3, method_args={"mode": mode})
        text = summary(pruner, folder, 1.0, {"prune": 1.0}, None, None)
        assert "unstructured" not in text and "structured: whole heads and MLP channels" in text
        assert f"parameters: {_parameters(pruner.model):,} parameters (dense " in text
        assert f'reload: {call}"{folder}")' in text
    pruner, folder = _saved(assets, "cli-wanda", method="wanda", sparsity=0.5)
    text = summary(pruner, folder, 1.0, {"prune": 1.0}, None, None)
    assert f'reload: transformers.AutoModelForCausalLM.from_pretrained("{folder}")' in text


def test_recovered_from_a_pruned_folder_keeps_its_lineage(assets):
    """base -> prune -> recover: the saved folder is reloaded, recovered and saved again (what `recover` does)."""
    _, pruned = _saved(assets, "to-recover", base_model=BASE_ID, method="wanda", sparsity=0.5)
    before = read_sidecar(pruned)
    pruner = GBLMPruner.from_pretrained(str(pruned), GBLMConfig.from_dict(before["config"]))
    pruner.recover(_quick(assets), progress=False)
    folder = pruner.save_pretrained(assets["root"] / "recovered", overwrite=True)
    sidecar = read_sidecar(folder)
    for key in ("base_model", "base_model_name", "config", "config_fingerprint", "calibration", "license"):
        assert sidecar[key] == before[key], key
    assert sidecar["base_model"] == BASE_ID and sidecar["source"] == str(pruned)
    assert [s["kind"] for s in sidecar["pruning_map"]["stages"]] == ["prune", "recover"]
    text, meta, title, _ = _card(folder)
    assert meta["base_model"] == BASE_ID and "perp-recovery" in meta["tags"]
    assert title == "# tiny-llama pruned with wanda (unstructured, 50%) and recovered with PERP"
    code = _reproduce(text)
    prune_at, recover_at = code.index("pruner.prune()"), code.index("pruner.recover(RecoveryConfig(")
    assert f'GBLMPruner.from_pretrained("{BASE_ID}", config)' in code and prune_at < recover_at
    assert "max_steps=2" in code and str(pruned) not in code and "to-recover" not in text
    assert verify_checkpoint(folder).ok


def test_dense(assets):
    pruner = GBLMPruner.from_pretrained(str(assets["base"]), _config(assets, method="magnitude"))
    folder = pruner.save_pretrained(assets["root"] / "dense", allow_dense=True, overwrite=True)
    text, meta, title, usage = _card(folder)
    assert title == "# tiny-llama (dense, not pruned)" and meta["tags"] == ["gblm", "optimum-gblm", "dense"]
    assert "**not pruned**" in text and "AutoModelForCausalLM.from_pretrained" in usage
    assert read_sidecar(folder)["pruning_map"] is None


@pytest.mark.parametrize("zeros", [True, False], ids=["pruned-elsewhere", "dense"])
def test_recovered_without_a_sidecar_claims_no_pruning(assets, zeros, caplog):
    """A folder without gblm_config.json (pruned by another tool, or dense): no invented method, pattern or sparsity."""
    folder = assets["root"] / f"bare-{zeros}"
    shutil.rmtree(folder, ignore_errors=True)
    if zeros:
        shutil.copytree(_saved(assets, f"bare-source-{zeros}", method="magnitude", sparsity=0.5)[1], folder)
        for name in ("gblm_config.json", "README.md", "sparsity.png"):
            (folder / name).unlink()
    else:
        shutil.copytree(assets["base"], folder)
    pruner = GBLMPruner.from_pretrained(str(folder), _config(assets))
    pruner.recover(_quick(assets), progress=False)
    with pytest.raises(RuntimeError, match="no pruning record.*allow_dense=True"):
        pruner.save_pretrained(assets["root"] / f"bare-out-{zeros}", overwrite=True)
    out = pruner.save_pretrained(assets["root"] / f"bare-out-{zeros}", overwrite=True, allow_dense=True)
    sidecar = read_sidecar(out)
    assert [s["kind"] for s in sidecar["pruning_map"]["stages"]] == ["recover"]
    text, meta, title, usage = _card(out)
    assert title == f"# {folder.name} fine-tuned with PERP recovery (no pruning record)"
    assert not {"pruned", "sparse", "magnitude", "unstructured-sparsity"} & set(meta["tags"])
    assert "no-pruning-record" in meta["tags"]
    share = f"{sidecar['pruning_map']['overall_sparsity']:.2%}"
    assert f"{share} of its prune targets' weights are exact zeros" in text
    for claim in ("pruned with", "gradient information", "unknown", "After pruning", "| Method |", "ties:"):
        assert claim not in text, claim
    assert "AutoModelForCausalLM.from_pretrained" in usage
    assert ("50.00%" in share) == zeros


def test_recover_eval_help_says_before_and_after():
    from optimum_gblm.commands.recover import RecoverCommand

    parser = argparse.ArgumentParser()
    RecoverCommand.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "eval")
    assert "before and after recovery" in action.help and "dense" not in action.help


def test_an_older_derived_map_reads_as_no_pruning_record(assets):
    """Side-cars written by earlier versions for a model without a record have an invented "unknown" prune stage."""
    from optimum_gblm import render_model_card

    _, folder = _saved(assets, "older", method="magnitude", sparsity=0.5)
    sidecar = json.loads((folder / "gblm_config.json").read_text())
    sidecar["pruning_map"]["stages"] = [
        {"kind": "prune", "method": "unknown", "settings": {"derived_from": "exact zeros of the loaded weights"}}
    ]
    text = render_model_card(sidecar)
    assert "no pruning record" in text and "pruned with" not in text
