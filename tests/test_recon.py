"""sparsegpt-recon: SparseGPT's masks, then mask-preserving block reconstruction (docs/semantics.md#15)."""

import copy

import pytest
import torch
from conftest import tiny_model

from optimum_gblm import GBLMConfig, GBLMPruner
from optimum_gblm.blocks import run_block
from optimum_gblm.methods import get_method
from optimum_gblm.methods import recon as recon_module
from optimum_gblm.methods.recon import reconstruct_block, reconstruction_error

CALIB = dict(num_samples=4, seqlen=16, device="cpu")


def _ids(n=4, seqlen=16, seed=1):
    return torch.randint(0, 128, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _prune(model, pattern="2:4", sparsity=0.5, **method_args):
    config = GBLMConfig(
        method="sparsegpt-recon", pattern=pattern, sparsity=sparsity, method_args={"recon_lr": 1e-3, **method_args}
    )
    config = GBLMConfig.from_dict({**config.to_dict(), **CALIB})
    pruner = GBLMPruner(model, config)
    pruner.prune(calibration=_ids(), progress=False)
    return pruner


def _linears(model):
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if ".layers." in n and hasattr(m, "weight")}


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_pattern_holds_in_every_group_after_the_update(pattern):
    n, m = (int(v) for v in pattern.split(":"))
    model = tiny_model()
    dense = _linears(model)
    _prune(model, pattern)
    for name, weight in _linears(model).items():
        if weight.dim() != 2 or name.endswith("norm"):
            continue
        zeros = (weight.reshape(weight.shape[0], -1, m) == 0).sum(dim=2)
        assert bool((zeros >= n).all()), f"{name}: a group of {m} keeps more than {m - n} weights"
        assert not torch.equal(weight, dense[name])


def test_reconstruction_keeps_zeros_changes_kept_weights_and_lowers_the_error():
    torch.manual_seed(0)
    model = tiny_model()
    block = model.model.layers[0]
    states = [torch.randn(1, 16, 64) for _ in range(4)]
    position = torch.arange(16).unsqueeze(0)
    kwargs = {"position_embeddings": model.model.rotary_emb(states[0], position)}
    inputs = [(x, kwargs) for x in states]
    with torch.no_grad():
        dense_out = [run_block(block, x, kw, torch.float32) for x, kw in inputs]
    weights = [block.self_attn.o_proj.weight, block.mlp.down_proj.weight]
    with torch.no_grad():
        for w in weights:
            w.masked_fill_(torch.rand(w.shape) < 0.5, 0)
    zeros = [w.detach() == 0 for w in weights]
    kept_before = [w.detach().clone() for w in weights]
    untouched = block.self_attn.q_proj.weight.detach().clone()
    before = reconstruction_error(block, inputs, dense_out)
    reconstruct_block(block, weights, inputs, dense_out, steps=20, lr=1e-3, batch=2)
    after = reconstruction_error(block, inputs, dense_out)
    assert after < 0.5 * before, (before, after)
    for w, z, old in zip(weights, zeros, kept_before):
        assert bool((w[z] == 0).all())  # every zero survives
        assert not torch.equal(w[~z], old[~z])  # the kept weights moved
    assert torch.equal(block.self_attn.q_proj.weight, untouched)  # only the given weights are optimised
    assert all(p.grad is None for p in block.parameters())


def test_the_update_lowers_the_block_output_error_against_sparsegpt():
    """The distinguishing step: the same masks' blocks match the dense block better after reconstruction."""
    recorded = []
    real = recon_module.reconstruct_block

    def spy(block, weights, inputs, dense_out, steps, lr, batch):
        before = reconstruction_error(block, inputs, dense_out)
        real(block, weights, inputs, dense_out, steps, lr, batch)
        recorded.append((before, reconstruction_error(block, inputs, dense_out)))

    recon_module.reconstruct_block = spy
    try:
        _prune(tiny_model(), recon_steps=8)
    finally:
        recon_module.reconstruct_block = real
    assert len(recorded) == 2  # one per block
    assert all(after < before for before, after in recorded), recorded


def test_zero_steps_is_sparsegpt_and_unstructured_counts_hold():
    base = tiny_model()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    _prune(a, "unstructured", 0.5, recon_steps=1, recon_lr=1e-12)
    config = GBLMConfig.from_dict({"method": "sparsegpt", "sparsity": 0.5, **CALIB})
    GBLMPruner(b, config).prune(calibration=_ids(), progress=False)
    for (name, wa), wb in zip(_linears(a).items(), _linears(b).values()):
        if wa.dim() == 2:
            assert torch.equal(wa == 0, wb == 0), name  # a negligible step: SparseGPT's own masks
            assert int((wa == 0).sum()) >= wa.numel() // 2


def test_deterministic():
    base = tiny_model()
    a, b = _prune(copy.deepcopy(base)).model, _prune(copy.deepcopy(base)).model
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_model_target_matches_the_dense_models_states():
    """recon_target='model': block i's targets are the dense model's hidden states after block i; 'block': the
    dense block's outputs on the pruned model's inputs (different from block 1 on)."""
    model = tiny_model(num_hidden_layers=3)
    with torch.no_grad():
        hidden = model(_ids(), output_hidden_states=True).hidden_states
    seen = {}

    def spy(block, weights, inputs, dense_out, steps, lr, batch):
        seen.setdefault(target, []).append(torch.cat(dense_out))

    real = recon_module.reconstruct_block
    recon_module.reconstruct_block = spy
    try:
        for target in ("model", "block"):
            _prune(copy.deepcopy(model), recon_target=target)
    finally:
        recon_module.reconstruct_block = real
    for i in (0, 1):  # the last hidden state HF returns has the final norm applied
        assert torch.allclose(seen["model"][i], hidden[i + 1], atol=1e-5)
    assert torch.allclose(seen["block"][0], hidden[1], atol=1e-5)
    assert not torch.allclose(seen["block"][1], hidden[2], atol=1e-3)


@pytest.mark.parametrize(
    "args, message",
    [
        ({"recon_target": "layer"}, "recon_target='layer' is invalid: choose one of block, model"),
        ({"recon_lr": 0.0}, "recon_lr=0.0 is invalid"),
        ({"recon_steps": 0}, "recon_steps=0 is invalid"),
        ({"recon_batch": 1.5}, "recon_batch=1.5 is invalid"),
        ({"recon": 1}, "method 'sparsegpt-recon' has no argument"),
    ],
)
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        GBLMConfig(method="sparsegpt-recon", method_args=args)


def test_disk_placement_is_refused_before_loading():
    with pytest.raises(ValueError, match="placement='disk' is not supported by method 'sparsegpt-recon'"):
        GBLMConfig(method="sparsegpt-recon", placement="disk")
    assert get_method("sparsegpt").refiner(GBLMConfig(method="sparsegpt")) is None
    refine, target = get_method("sparsegpt-recon").refiner(GBLMConfig(method="sparsegpt-recon"))
    assert callable(refine) and target == "model"
