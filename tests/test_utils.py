"""The one copy of each shared piece: the local-path rule, the model-state context manager, the block runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from optimum_gblm.blocks import call_block, run_block
from optimum_gblm.utils import looks_like_local_path, model_state, requires_grad_flags, restore_requires_grad

# (name, looks like a local path): Hub ids are `name` or `org/name`; everything else here can only be a path.
LOCAL_PATH_CASES = [
    ("./x", True),
    ("../x", True),
    (".", True),
    ("..", True),
    ("x/y.txt", True),
    ("notes.TXT", True),
    ("model.safetensors", True),
    ("pytorch_model.bin", True),
    ("~/x", True),
    ("~", True),
    ("/abs", True),
    ("a/b/c", True),
    ("C:\\x", True),
    ("C:/models/x", True),
    (".\\x", True),
    ("org\\name", True),
    ("org/name", False),
    ("name", False),
    ("Qwen/Qwen2.5-0.5B", False),  # dots in a Hub id are no file suffix
    ("HuggingFaceTB/SmolLM2-135M", False),
    ("timm/vit_tiny_patch16_224", False),
    ("hf-hub:timm/vit_tiny_patch16_224", False),
]


@pytest.mark.parametrize(("name", "local"), LOCAL_PATH_CASES, ids=[c[0] for c in LOCAL_PATH_CASES])
def test_local_path_rule(name: str, local: bool):
    assert looks_like_local_path(name) is local


def test_an_existing_folder_named_like_a_hub_id_is_told_by_existence(tmp_path: Path, monkeypatch):
    """The rule is lexical; an `org/name` folder in the working directory is found by the callers' existence check,
    which is why the rule leaves it alone (and the missing-path errors fire only on names that can't be Hub ids)."""
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not looks_like_local_path("org/name") and Path("org/name").exists()
    assert looks_like_local_path(str(tmp_path / "org" / "name"))


def test_every_caller_uses_the_one_rule(tmp_path: Path, monkeypatch):
    """A model source (Python API), a CLI --model and the base model's Hub id agree: a missing path is refused
    before anything is loaded, and a path is never taken for a Hub id."""
    from optimum_gblm.adapters.decoder import _check_path
    from optimum_gblm.commands.base import check_model_path
    from optimum_gblm.commands.errors import UsageError
    from optimum_gblm.publishing.provenance import hub_base_model

    monkeypatch.chdir(tmp_path)
    for name, local in LOCAL_PATH_CASES:
        if Path(name).expanduser().exists():
            continue  # ".", "..", "~"
        if local:
            with pytest.raises(FileNotFoundError, match="does not exist"):
                _check_path(name)
            with pytest.raises(UsageError, match="does not exist"):
                check_model_path(name)
            assert hub_base_model(name) is None, name
        else:
            _check_path(name)
            check_model_path(name)


def _model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 2))
    model[0].bias.requires_grad_(False)  # a mixed starting state, to see it come back
    return model


def test_model_state_sets_and_restores_flags_mode_and_grads():
    model = _model()
    model.train()
    model[2].weight.grad = torch.ones_like(model[2].weight)
    before = requires_grad_flags(model)
    with model_state(model, trainable=[model[2].weight], train=False, clear_grads=True):
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["2.weight"]
        assert not model.training and not model[1].training
        assert all(p.grad is None for p in model.parameters())
        model(torch.randn(4, 3)).sum().backward()
        assert model[2].weight.grad is not None
    assert requires_grad_flags(model) == before and before["0.bias"] is False
    assert model.training and model[1].training
    assert all(p.grad is None for p in model.parameters())  # the grads of the block are dropped on exit too


def test_model_state_restores_on_exception():
    model = _model()
    model.eval()
    before = requires_grad_flags(model)
    with pytest.raises(RuntimeError, match="boom"), model_state(model, trainable=(), train=True):
        assert not any(p.requires_grad for p in model.parameters()) and model.training
        raise RuntimeError("boom")
    assert requires_grad_flags(model) == before and not model.training


def test_model_state_leaves_alone_what_it_is_not_asked_to_change():
    model = _model()
    model.train()
    model[1].eval()  # a submodule in another mode: model.train(...) would overwrite it
    before = requires_grad_flags(model)
    grad = torch.ones_like(model[0].weight)
    model[0].weight.grad = grad
    with model_state(model):
        assert requires_grad_flags(model) == before and model.training and not model[1].training
    assert not model[1].training and model[0].weight.grad is grad
    with model_state(model, train=False):
        assert requires_grad_flags(model) == before and not model.training
    assert model.training and model[0].weight.grad is grad


def test_restore_requires_grad_gives_unknown_parameters_the_default():
    model = _model()
    flags = {"0.weight": False}
    restore_requires_grad(model, flags)
    assert requires_grad_flags(model) == {"0.weight": False, "0.bias": False, "2.weight": True, "2.bias": True}
    restore_requires_grad(model, flags, missing=False)
    assert not any(requires_grad_flags(model).values())


def test_block_runner_moves_arguments_and_casts_only_when_asked():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, extra: torch.Tensor, *, scale: torch.Tensor) -> tuple:
            return self.linear(x) * scale + extra, None

    block = Block()
    states = torch.randn(2, 4, dtype=torch.float64)
    kwargs = {"__args__": (torch.zeros(4),), "scale": torch.tensor(2.0)}
    raw = call_block(block.double(), states, kwargs)
    assert isinstance(raw, tuple) and raw[0].dtype == torch.float64
    block.float()
    out = run_block(block, states, kwargs, torch.float32)
    assert out.dtype == torch.float32 and torch.allclose(out, block.linear(states.float()) * 2)
    assert "__args__" in kwargs  # the captured arguments are not consumed
    with pytest.raises(RuntimeError):  # without a dtype the states keep theirs
        run_block(block, states, kwargs)
