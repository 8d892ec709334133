"""Recovery after pruning (PERP) on tiny models: sparsity kept exactly, untouched parameters bit-identical, plain
reload, resume equivalence, and bad input refused before training."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from optimum_gblm import GBLMConfig
from optimum_gblm.pruner import GBLMPruner
from optimum_gblm.publishing.sidecar import read_sidecar
from optimum_gblm.recovery import RecoveryConfig
from tests.helpers.tiny_models import save_tiny_llama, write_text


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("recovery")
    return {
        "llama": save_tiny_llama(root / "llama"),
        "qwen2": save_tiny_llama(root / "qwen2", model_type="qwen2"),  # q/k/v biases
        "text": write_text(root / "text.txt", 400),
        "root": root,
    }


def pruned(assets: dict, pattern: str = "unstructured", model: str = "llama", prune: bool = True) -> GBLMPruner:
    config = GBLMConfig(
        method="magnitude", sparsity=0.5, pattern=pattern, calibration=str(assets["text"]), seqlen=16, device="cpu"
    )
    pruner = GBLMPruner.from_pretrained(assets[model], config)
    if prune:
        pruner.prune(progress=False)
    return pruner


def quick(assets: dict, **overrides) -> RecoveryConfig:
    """Three steps of two 16-token windows: enough to move every trained parameter."""
    settings = dict(source=str(assets["text"]), max_steps=3, batch_size=2, seqlen=16, num_windows=8)
    settings.update(heldout_windows=1, learning_rate=1e-2, warmup_ratio=0.0, logging_steps=1)
    return RecoveryConfig(**{**settings, **overrides})


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def expected_trained(pruner: GBLMPruner, subset: list[str]) -> set[str]:
    """State-dict names each subset must change (written independently of the library's selection)."""
    names = set(pruner.model.state_dict())
    out: set[str] = set()
    if "norm" in subset:
        out |= {n for n in names if "norm" in n}
    if "bias" in subset:
        out |= {n for n in names if n.endswith("proj.bias")}
    if "head" in subset:
        out |= {"lm_head.weight", "model.embed_tokens.weight"}  # tied in the tiny models
    if {"masklora", "scalelora"} & set(subset):
        out |= {f"{name}.weight" for name in pruner.pruning_map.targets}
    return out


@pytest.mark.parametrize(
    "subset,pattern,model",
    [
        (["norm"], "unstructured", "llama"),
        (["bias"], "unstructured", "qwen2"),
        (["head"], "unstructured", "llama"),
        (["masklora"], "unstructured", "llama"),
        (["masklora", "norm"], "2:4", "llama"),
        (["scalelora"], "2:4", "qwen2"),
    ],
)
def test_sparsity_kept_and_only_the_subset_changes(assets, subset, pattern, model):
    pruner = pruned(assets, pattern, model)
    masks = {name: pruner.pruning_map.mask(name) for name in pruner.pruning_map.targets}
    sparsity = pruner.pruning_map.overall_sparsity
    before = snapshot(pruner.model)
    pruner.recover(quick(assets, subset=subset), progress=False)
    after = pruner.model.state_dict()
    for name, mask in masks.items():  # every pruned position is still exactly zero
        assert torch.count_nonzero(after[f"{name}.weight"][mask]) == 0, name
    trained = expected_trained(pruner, subset)
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    assert changed == trained  # untouched-by-design parameters are bit-identical; every trained one moved
    assert all(not p.requires_grad or n in before for n, p in pruner.model.named_parameters())
    stage = pruner.pruning_map.stages[-1]
    assert stage.kind == "recover" and stage.settings["subset"] == subset
    assert 0 < stage.settings["trainable_params"] < stage.settings["total_params"]
    assert stage.settings["tokens"] == 3 * 2 * 16 and "heldout_loss" in stage.settings
    if "head" in subset:
        assert stage.settings["tied_head"] and pruner.model.lm_head.weight is pruner.model.model.embed_tokens.weight
    recovered = {n: after[f"{n}.weight"] for n in masks}
    assert sum(int((w == 0).sum()) for w in recovered.values()) >= sparsity * sum(
        w.numel() for w in recovered.values()
    )


class Logits(TrainerCallback):
    """The model's logits on fixed tokens at the end of training, before the updates are merged."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.ids, self.logits = model, torch.arange(16).view(1, 16), None

    def on_train_end(self, args, state, control, **kwargs):
        with torch.no_grad():
            self.logits = self.model.eval()(input_ids=self.ids).logits


@pytest.mark.parametrize("subset", [["masklora"], ["scalelora"]])
def test_merged_model_is_the_trained_model(assets, subset):
    """The low-rank update only ever reaches kept weights, so merging (and re-applying the mask) does not change the
    function that was trained; an update that also moved pruned weights would lose part of itself at the merge."""
    pruner = pruned(assets)
    probe = Logits(pruner.model)
    pruner.recover(quick(assets, subset=subset), callbacks=[probe], progress=False)
    with torch.no_grad():
        merged = pruner.model(input_ids=probe.ids).logits
    base = pruned(assets).model(input_ids=probe.ids).logits
    assert not torch.allclose(probe.logits, base, atol=1e-3)  # training changed the function
    torch.testing.assert_close(merged, probe.logits, rtol=1e-5, atol=1e-5)


def test_save_reloads_with_plain_transformers_and_records_the_stage(assets, tmp_path):
    pruner = pruned(assets)
    evaluate = {"source": str(assets["text"]), "seqlen": 16, "max_windows": 3}
    pruner.recover(quick(assets), evaluate=evaluate, progress=False)
    folder = pruner.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ours = pruner.model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, ours[name]), name
    sidecar = read_sidecar(folder)
    stages = sidecar["pruning_map"]["stages"]
    assert [s["kind"] for s in stages] == ["prune", "recover"]
    settings = stages[1]["settings"]
    assert settings["perplexity_before"] == pruner.results["pruned_perplexity"]
    assert settings["perplexity_after"] == pruner.results["recovered_perplexity"]
    card = (folder / "README.md").read_text()
    assert "### Recovery" in card and f"{settings['trainable_params']:,}" in card and "Recovered" in card
    json.dumps(sidecar)


class Interrupt(TrainerCallback):
    """Stop the run right after the checkpoint of `step` is written, as a kill would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


@pytest.mark.parametrize("subset", [["norm", "masklora"], ["scalelora"]])
def test_interrupted_run_resumes_to_the_same_weights(assets, tmp_path, subset, caplog):
    settings = dict(subset=subset, max_steps=4)
    uninterrupted = pruned(assets)
    uninterrupted.recover(quick(assets, **settings), progress=False)
    interrupted = pruned(assets)
    runs = dict(output_dir=str(tmp_path / "run"), save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        interrupted.recover(quick(assets, **settings, **runs), callbacks=[Interrupt(2)], progress=False)
    with pytest.raises(ValueError, match="resume=True"):  # checkpoints of the earlier run are never overwritten
        pruned(assets).recover(quick(assets, **settings, **runs), progress=False)
    resumed, counter = pruned(assets), CountSteps()
    with caplog.at_level(logging.WARNING):
        resumed.recover(quick(assets, **settings, **runs, resume=True), callbacks=[counter], progress=False)
    assert counter.steps == 2  # only the steps after the checkpoint ran
    assert "missing keys" not in caplog.text.lower(), caplog.text  # the tied head is not missing, it is tied
    expected = uninterrupted.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_distillation_uses_the_teacher(assets):
    teacher = AutoModelForCausalLM.from_pretrained(assets["llama"], dtype=torch.float32)
    plain, distilled = pruned(assets), pruned(assets)
    plain.recover(quick(assets, subset=["norm"]), progress=False)
    distilled.recover(
        quick(assets, subset=["norm"], distill_weight=0.5, heldout_steps=2), teacher=teacher, progress=False
    )
    name = "model.norm.weight"
    assert not torch.equal(plain.model.state_dict()[name], distilled.model.state_dict()[name])
    assert distilled.pruning_map.stages[-1].settings["distill_weight"] == 0.5


def test_checkpoint_without_masks_uses_its_zeros(assets, tmp_path):
    """A saved checkpoint has no masks: its exact zeros are the mask, and a map is derived from them."""
    folder = pruned(assets, "2:4").save_pretrained(tmp_path / "pruned")
    pruner = GBLMPruner.from_pretrained(folder, GBLMConfig(pattern="2:4", seqlen=16, device="cpu"))
    zeros = {n: t == 0 for n, t in pruner.model.state_dict().items() if n.endswith("proj.weight")}
    pruner.recover(quick(assets, subset=["scalelora"]), progress=False)
    for name, mask in zeros.items():
        assert torch.count_nonzero(pruner.model.state_dict()[name][mask]) == 0, name
    assert pruner.pruning_map.pattern_ok and pruner.pruning_map.stages[-1].kind == "recover"


def test_dense_model_warns_and_still_recovers(assets, caplog):
    pruner = pruned(assets, prune=False)
    with caplog.at_level(logging.WARNING, logger="optimum_gblm"):
        pruner.recover(quick(assets, subset=["norm"], max_steps=1), progress=False)
    assert "was not pruned" in caplog.text
    # no pruning is invented: the map records the recovery only (the card then says "no pruning record")
    assert [stage.kind for stage in pruner.pruning_map.stages] == ["recover"]
    assert pruner.pruning_map.overall_sparsity == 0.0 and pruner.recovery["max_steps"] == 1


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"learning_rate": 0.0}, "learning_rate=0.0 is invalid"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"max_steps": 0}, "max_steps=0 is invalid"),
        ({"subset": ["norm", "weights"]}, "subset=.* is invalid"),
        ({"subset": ["masklora", "scalelora"]}, "choose one"),
        ({"resume": True}, "needs the output_dir"),
    ],
)
def test_invalid_settings_are_refused(assets, overrides, message):
    with pytest.raises(ValueError, match=message):
        quick(assets, **overrides)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"lora_rank": 65}, "lora_rank=65 is larger than the layer"),
        ({"seqlen": 4096}, "training text is too short"),
        ({"distill_weight": 0.5}, "needs a dense teacher"),
        ({"lora_targets": ["nothing"]}, "matches no prunable"),
    ],
)
def test_bad_input_is_refused_before_training(assets, tmp_path, overrides, message):
    pruner = pruned(assets)
    before = snapshot(pruner.model)
    with pytest.raises(ValueError, match=message):
        pruner.recover(quick(assets, output_dir=str(tmp_path / "run"), **overrides), progress=False)
    assert all(torch.equal(t, before[n]) for n, t in pruner.model.state_dict().items())
    assert not (tmp_path / "run").exists() and len(pruner.pruning_map.stages) == 1


def test_resume_with_another_lora_rank_names_the_setting(assets, tmp_path):
    runs = dict(output_dir=str(tmp_path / "run"), save_steps=2, max_steps=2, lora_rank=4)
    pruned(assets).recover(quick(assets, **runs), progress=False)
    again = pruned(assets)
    with pytest.raises(ValueError, match=r"lora_rank=8: its checkpoints were trained with lora_rank=4"):
        again.recover(quick(assets, **{**runs, "lora_rank": 8, "max_steps": 4}, resume=True), progress=False)
    assert len(again.pruning_map.stages) == 1  # refused before any training


# -- optimum-cli gblm recover -------------------------------------------------------------------------------------
def test_cli_recovers_a_saved_checkpoint(assets, tmp_path):
    from tests.test_cli import OPTIMUM_CLI, cli, ok

    if not OPTIMUM_CLI.exists():
        pytest.skip("optimum-cli is not installed in this environment")
    source = pruned(assets, "2:4").save_pretrained(tmp_path / "pruned")
    zeros = {n: t == 0 for n, t in AutoModelForCausalLM.from_pretrained(source).state_dict().items()}
    text = str(assets["text"])
    options = ["--max-steps", "2", "--batch-size", "2", "--seqlen", "16", "--num-windows", "4", "--source", text]
    options += ["--heldout-windows", "1", "--device", "cpu", "--no-progress", "--subset", "norm", "masklora"]
    out = tmp_path / "recovered"
    evaluation = ["--eval", "--eval-seqlen", "16", "--eval-windows", "2", "--eval-source", text]
    result = ok(cli("recover", source, "--output", out, *options, *evaluation))
    assert "perplexity" in result.stdout
    assert "Memory plan" not in result.stderr  # the planner's phases (gradients, prune) are not what recover runs
    recovered = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, mask in zeros.items():
        assert torch.count_nonzero(recovered[name][mask]) == 0, name
    stages = read_sidecar(out)["pruning_map"]["stages"]
    assert [s["kind"] for s in stages] == ["prune", "recover"] and stages[1]["settings"]["max_steps"] == 2
    assert "### Recovery" in (out / "README.md").read_text()


def test_cli_options_are_the_recovery_config_fields():
    """In process: every RecoveryConfig field is an option, and an invalid value is a usage error (exit 2)."""
    import argparse
    from dataclasses import fields

    from optimum_gblm.commands.errors import UsageError
    from optimum_gblm.commands.recover import RecoverCommand, recovery_config_from_args

    parser = argparse.ArgumentParser()
    RecoverCommand.add_arguments(parser)
    args = parser.parse_args(["ckpt", "--output", "out", "--subset", "norm", "scalelora", "--seqlen", "64"])
    config = recovery_config_from_args(args)
    assert config.subset == ["norm", "scalelora"] and config.seqlen == 64 and not hasattr(args, "seqlen")
    for f in fields(RecoveryConfig):
        assert f"--{f.name.replace('_', '-')}" in parser.format_help(), f.name
    with pytest.raises(UsageError, match="learning_rate=0.0 is invalid"):
        recovery_config_from_args(parser.parse_args(["ckpt", "--output", "out", "--learning-rate", "0"]))


def test_gradient_checkpointing_is_left_off_afterwards(assets):
    plain, checkpointed = pruned(assets), pruned(assets)
    plain.recover(quick(assets, subset=["norm", "masklora"]), progress=False)
    checkpointed.recover(quick(assets, subset=["norm", "masklora"], gradient_checkpointing=True), progress=False)
    model = checkpointed.model  # the flag was renamed in transformers 5.2x; 5.17 (still supported) has the old name
    flag = (
        "is_activation_checkpointing"
        if hasattr(type(model), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    assert getattr(model, flag) is False
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    expected = plain.model.state_dict()  # recomputing activations changes no gradient
    for name, tensor in checkpointed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)


def test_structured_result_recovers_with_its_shapes_and_reloads(assets, tmp_path, caplog):
    """After structured pruning (heads and channels removed, compensation biases added) the trained subset keeps
    every shape, the compensation biases are trained by the "bias" subset, and the saved folder reloads."""
    config = GBLMConfig(
        method="flap",
        sparsity=0.3,
        method_args={"mode": "uniform"},
        calibration=str(assets["text"]),
        num_samples=4,
        seqlen=16,
        device="cpu",
    )
    pruner = GBLMPruner.from_pretrained(assets["llama"], config)
    pruner.prune(progress=False)
    shapes = {name: tuple(t.shape) for name, t in pruner.model.state_dict().items()}
    before = snapshot(pruner.model)
    with caplog.at_level(logging.INFO, logger="optimum_gblm"):
        pruner.recover(quick(assets, subset=["bias", "masklora"]), evaluate={"max_windows": 1}, progress=False)
    assert "was not pruned" not in caplog.text  # removal leaves no zeros, but the model is pruned
    assert "removed heads and channels stay removed" in caplog.text
    assert {"pruned_perplexity", "recovered_perplexity"} <= set(pruner.results)
    after = pruner.model.state_dict()
    assert {name: tuple(t.shape) for name, t in after.items()} == shapes
    assert not torch.equal(after["model.layers.0.mlp.down_proj.bias"], before["model.layers.0.mlp.down_proj.bias"])
    assert not torch.equal(
        after["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"]
    )
    folder = pruner.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, after[name]), name
    assert [s["kind"] for s in read_sidecar(folder)["pruning_map"]["stages"]] == ["prune", "recover"]


def test_cli_refuses_a_resume_with_other_settings_before_loading(assets, tmp_path):
    from tests.test_cli import OPTIMUM_CLI, cli

    if not OPTIMUM_CLI.exists():
        pytest.skip("optimum-cli is not installed in this environment")
    runs = dict(output_dir=str(tmp_path / "run"), save_steps=2, max_steps=2, subset=["norm", "masklora"], lora_rank=4)
    pruned(assets).recover(quick(assets, **runs), progress=False)
    missing = tmp_path / "no-model-here"  # never loaded: the check comes first
    missing.mkdir()
    (missing / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = cli(
        "recover",
        *("--model", missing, "--output", tmp_path / "out", "--output-dir", runs["output_dir"]),
        *("--resume", "--lora-rank", "2", "--device", "cpu"),
    )
    assert result.returncode == 2, result.stderr
    assert "--lora-rank 2: its checkpoints were trained with --lora-rank 4" in result.stderr
