"""placement="disk": the model read block by block from its safetensors checkpoint gives the in-memory masks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from optimum_gblm import GBLMConfig
from optimum_gblm.pruner import GBLMPruner
from tests.conftest import tiny_model

IDS = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tiny_model("llama", num_hidden_layers=3).save_pretrained(path)
    return path


def _weights(folder) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    return {k: v for f in files for k, v in load_file(folder / f).items()}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "gblm-obs"])
def test_disk_placement_prunes_like_the_in_memory_pipeline(folder, tmp_path, method):
    settings = dict(method=method, sparsity=0.5, device="cpu", batch_size=2, intermediates="cpu")
    memory = GBLMPruner.from_pretrained(folder, GBLMConfig(**settings))
    memory.calibration_data(IDS)
    cache = tmp_path / "grads.safetensors"
    if memory.config.needs_gradients:
        memory.collect_gradients(cache_path=cache, progress=False)
    memory.prune(progress=False)
    memory.save_pretrained(tmp_path / "memory", model_card=False)

    disk = GBLMPruner.from_pretrained(folder, GBLMConfig(**settings, placement="disk"))
    assert all(p.is_meta for p in disk.model.model.layers.parameters())  # nothing of the blocks is loaded
    # gblm-obs: the gradient cache of the in-memory run is matched (model fingerprint read from the checkpoint).
    disk.prune(calibration=IDS, gradients=cache if cache.exists() else None, progress=False)
    assert all(p.is_meta for p in disk.model.model.layers.parameters())  # every block went back to disk
    disk.save_pretrained(tmp_path / "disk", model_card=False)

    want, got = _weights(tmp_path / "memory"), _weights(tmp_path / "disk")
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert disk.pruning_map.overall_sparsity == pytest.approx(memory.pruning_map.overall_sparsity)
    zeros = float((got["model.layers.2.mlp.down_proj.weight"] == 0).float().mean())
    assert zeros == pytest.approx(disk.sparsities.get("model.layers.2.mlp.down_proj", 0.5), abs=0.01)  # pruned
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "disk")
    assert torch.equal(
        reloaded.model.layers[1].self_attn.q_proj.weight, want["model.layers.1.self_attn.q_proj.weight"]
    )


def test_disk_placement_refuses_what_needs_the_whole_model(folder, tmp_path):
    config = GBLMConfig(method="gblm-obs", sparsity=0.5, device="cpu", placement="disk")
    pruner = GBLMPruner.from_pretrained(folder, config)
    with pytest.raises(ValueError, match="placement='disk' never holds the whole model, which the gradient pass"):
        pruner.prune(calibration=IDS, progress=False)
    with pytest.raises(ValueError, match="which an evaluation needs"):
        pruner.evaluate(source="offline-corpus", max_windows=1)
    with pytest.raises(ValueError, match="pass the folder, not a model"):
        GBLMPruner.from_pretrained(tiny_model("llama"), config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="needs a local checkpoint folder with config.json"):
        GBLMPruner.from_pretrained(tmp_path / "empty", config)
    (tmp_path / "empty" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ValueError, match="neither model.safetensors nor model.safetensors.index.json"):
        GBLMPruner.from_pretrained(tmp_path / "empty", config)


def test_datafree_disk_placement_copies_blocks_it_never_visits(folder, tmp_path):
    settings = dict(method="magnitude", sparsity=0.5, device="cpu", targets=[r"layers\.1\."])
    memory = GBLMPruner.from_pretrained(folder, GBLMConfig(**settings))
    memory.prune(progress=False)
    memory.save_pretrained(tmp_path / "memory", model_card=False)
    disk = GBLMPruner.from_pretrained(folder, GBLMConfig(**settings, placement="disk"))
    disk.prune(progress=False)
    disk.save_pretrained(tmp_path / "disk", model_card=False)
    want, got = _weights(tmp_path / "memory"), _weights(tmp_path / "disk")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
