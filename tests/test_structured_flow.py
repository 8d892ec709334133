"""Per-layer structured checkpoints (the default output of adaptive structured pruning) through every entry point:
the CLI flow prune -> evaluate -> recover -> evaluate -> push -> load from the local Hub by repo id, one test; plain
transformers' family classes refuse the folder naming `load_pruned`; pruning one again; bad model arguments."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from optimum_gblm import GBLMConfig, GBLMPruner, load_pruned, verify_checkpoint
from tests.helpers.hub_server import LocalHubServer, hub_env, patch_hub_in_process
from tests.helpers.tiny_models import save_tiny_llama, write_text
from tests.test_cli import OPTIMUM_CLI, TOKEN, cli, offline_env, ok

pytestmark = pytest.mark.skipif(not OPTIMUM_CLI.exists(), reason="optimum-cli is not installed in this environment")

GQA = dict(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2)  # adaptive widths differ per layer
FAST = ("--device", "cpu", "--no-progress")
RECOVER = ("--max-steps", "2", "--batch-size", "2", "--seqlen", "16", "--num-windows", "4", "--lora-rank", "4")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("structured-flow")
    return {"model": save_tiny_llama(root / "tiny", **GQA), "text": write_text(root / "text.txt"), "root": root}


def evaluation(assets: dict[str, Path]) -> tuple[str | Path, ...]:
    return ("--eval-seqlen", "16", "--eval-windows", "2", "--eval-source", assets["text"])


def prune_flap(assets: dict[str, Path], output: Path, model: Path | None = None) -> Path:
    calibration = ("--calibration", assets["text"], "--num-samples", "4", "--seqlen", "16")
    ok(cli("prune", "--model", model or assets["model"], "--method", "flap", "--sparsity", "0.4", *calibration, *FAST,
           "--output", output))  # fmt: skip
    return output


@pytest.fixture(scope="module")
def per_layer(assets: dict[str, Path]) -> Path:
    folder = prune_flap(assets, assets["root"] / "flap")
    widths = json.loads((folder / "config.json").read_text())["optimum_gblm_structure"]["layers"]
    assert len({w["intermediate_size"] for w in widths}) > 1  # really per-layer widths
    return folder


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(1, 17).reshape(2, 8)
    with torch.no_grad():
        return model.to("cpu").eval()(ids).logits


def test_structured_flow_through_the_cli_and_the_local_hub(assets, tmp_path, monkeypatch):
    pruned = prune_flap(assets, tmp_path / "pruned")
    assert "optimum_gblm_structure" in json.loads((pruned / "config.json").read_text())
    before = ok(cli("evaluate", pruned, *evaluation(assets), *FAST))
    assert before.stdout.startswith("perplexity: ")
    recovered = tmp_path / "recovered"
    ok(cli("recover", "--model", pruned, "--output", recovered, "--source", assets["text"], *RECOVER, *FAST))
    after = ok(cli("evaluate", "--model", recovered, *evaluation(assets), *FAST))
    assert after.stdout.startswith("perplexity: ") and after.stdout != before.stdout
    assert verify_checkpoint(recovered).ok
    local = load_pruned(recovered)
    assert [b.mlp.down_proj.in_features for b in local.model.layers] == [
        w["intermediate_size"] for w in json.loads((recovered / "config.json").read_text())["optimum_gblm_structure"]["layers"]
    ]  # fmt: skip
    repo = "test-user/tiny-flap-perp"
    with LocalHubServer(tmp_path / "hub-store", token=TOKEN) as hub:
        env = {**offline_env(), **hub_env(hub.endpoint, TOKEN, home=tmp_path / "hf-home")}
        ok(cli("push", recovered, repo, "--endpoint", hub.endpoint, "--token", TOKEN, "--no-progress", env=env))
        patch_hub_in_process(monkeypatch, hub.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
        from_hub = load_pruned(repo)
        pruner = GBLMPruner.from_pretrained(repo, GBLMConfig(device="cpu"))
    assert torch.equal(logits(from_hub), logits(local))
    assert torch.equal(logits(pruner.model), logits(local)) and pruner.tokenizer is not None


def test_family_classes_refuse_a_per_layer_folder_naming_load_pruned(per_layer):
    record = json.loads((per_layer / "config.json").read_text())["optimum_gblm_structure"]
    assert "model_type" not in record and record["family"] == "llama"  # LlamaConfig would pick a nested model_type
    for load in (LlamaConfig.from_pretrained, LlamaForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained):
        start = time.perf_counter()
        with pytest.raises(Exception) as caught:  # noqa: PT011  each loader raises its own type
            load(per_layer)
        assert time.perf_counter() - start < 10
        message = str(caught.value)
        assert "load_pruned" in message or "optimum_gblm_structured" in message, message
    with pytest.raises(Exception, match="load_pruned"):  # noqa: PT011  the class named in `architectures`
        LlamaForCausalLM.from_pretrained(per_layer)


def test_checkpoints_with_the_older_record_still_load(per_layer, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for path in per_layer.iterdir():
        (old / path.name).write_bytes(path.read_bytes())
    config = json.loads((old / "config.json").read_text())
    config["optimum_gblm_structure"]["model_type"] = config["optimum_gblm_structure"].pop("family")
    config.pop("layer_types")  # as written before the seal note
    (old / "config.json").write_text(json.dumps(config))
    assert torch.equal(logits(load_pruned(old)), logits(load_pruned(per_layer)))
    pruner = GBLMPruner.from_pretrained(old, GBLMConfig(device="cpu"))
    assert torch.equal(logits(pruner.model), logits(load_pruned(per_layer)))


@pytest.mark.parametrize("method", ["wanda", "flap"])
def test_a_per_layer_checkpoint_prunes_again(assets, per_layer, tmp_path, method):
    text = str(assets["text"])
    config = GBLMConfig(method=method, sparsity=0.3, calibration=text, num_samples=4, seqlen=16, device="cpu")
    pruner = GBLMPruner.from_pretrained(per_layer, config)
    widths = [b.mlp.down_proj.in_features for b in pruner.model.model.layers]
    model = pruner.prune(progress=False)
    folder = pruner.save_pretrained(tmp_path / method)
    assert verify_checkpoint(folder).ok
    assert torch.equal(logits(load_pruned(folder)), logits(model))
    after = [b.mlp.down_proj.in_features for b in model.model.layers]
    assert after == widths if method == "wanda" else all(a < w for a, w in zip(after, widths))


def test_every_entry_point_takes_the_per_layer_folder(assets, per_layer, tmp_path):
    ok(cli("evaluate", per_layer, "--tasks", "knowledge_probe", "--limit", "2", "--compare", per_layer, *FAST))
    calibration = ("--calibration", assets["text"], "--num-samples", "4", "--seqlen", "16")
    ok(cli("prune", "--model", per_layer, "--method", "magnitude", *calibration, *FAST, "--output", tmp_path / "m"))
    with pytest.raises(ValueError, match="placement='disk'.*per-layer"):
        GBLMPruner.from_pretrained(per_layer, GBLMConfig(device="cpu", placement="disk"))


def test_model_arguments_and_folders_that_are_no_model(assets, per_layer, tmp_path):
    for command, extra in (("evaluate", ()), ("recover", ("--output", tmp_path / "x"))):
        both = cli(command, per_layer, "--model", assets["model"], *extra, *FAST)
        assert both.returncode == 2 and "two models given" in both.stderr, both.stderr
        help_text = ok(cli(command, "--help")).stdout
        assert "--model MODEL" in help_text
        assert not any(flag in help_text for flag in ("--placement", "--pipeline", "--intermediates"))
    same = ok(cli("evaluate", per_layer, "--model", per_layer, *evaluation(assets), *FAST))
    assert same.stdout.startswith("perplexity: ")
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    no_type = tmp_path / "no-type"
    no_type.mkdir()
    (no_type / "config.json").write_text("{}")
    for folder in (not_a_model, no_type):
        for args in (("evaluate", folder), ("recover", "--model", folder, "--output", tmp_path / "y"),
                     ("prune", "--model", folder, "--output", tmp_path / "z")):  # fmt: skip
            result = cli(*args, *FAST)
            assert result.returncode == 2, result.stderr
            assert "is not a model" in result.stderr and "Should have a `model_type`" not in result.stderr
    with pytest.raises(ValueError, match="is not a model folder: it has no config.json"):
        GBLMPruner.from_pretrained(not_a_model, GBLMConfig(device="cpu"))
