"""CUDA paths on tiny models (`make gpu-test`; skipped without CUDA): every method prunes on the GPU as it does on
the CPU, structured removal gives the same shapes and outputs, and recovery on the GPU keeps the sparsity."""

from __future__ import annotations

import copy

import pytest
import torch

from optimum_gblm import GBLMConfig, GBLMPruner
from optimum_gblm.recovery import RecoveryConfig
from tests.conftest import tiny_model
from tests.helpers.tiny_models import save_tiny_llama, write_text

pytestmark = pytest.mark.gpu

MASK_METHODS = ["magnitude", "wanda", "gblm", "sparsegpt", "gblm-obs"]


def _prune(method: str, device: str, calib: torch.Tensor, **settings) -> GBLMPruner:
    config = GBLMConfig(method=method, device=device, num_samples=calib.shape[0], seqlen=calib.shape[1], **settings)
    pruner = GBLMPruner(tiny_model(), config)
    pruner.prune(calibration=calib, progress=False)
    return pruner


def _zeros(pruner: GBLMPruner) -> dict[str, torch.Tensor]:
    return {k: (v == 0).cpu() for k, v in pruner.model.state_dict().items() if k.endswith("proj.weight")}


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("method", MASK_METHODS)
def test_every_method_prunes_on_cuda_as_on_cpu(method, pattern, calib_ids):
    """Same calibration, same masks up to float rounding of the statistics (exactly the same for magnitude)."""
    cpu = _prune(method, "cpu", calib_ids, pattern=pattern)
    gpu = _prune(method, "cuda", calib_ids, pattern=pattern)
    assert next(gpu.model.parameters()).device.type == "cuda"
    assert gpu.pruning_map.pattern_ok and gpu.pruning_map.overall_sparsity == cpu.pruning_map.overall_sparsity
    a, b = _zeros(cpu), _zeros(gpu)
    agree = sum(int((a[k] == b[k]).sum()) for k in a) / sum(v.numel() for v in a.values())
    assert agree == 1.0 if method == "magnitude" else agree > 0.97, f"{method} {pattern}: {agree:.4f} agree"


@pytest.mark.parametrize("method", ["flap", "gblm-sp"])
def test_structured_removal_on_cuda_matches_the_cpu(method, calib_ids):
    settings = {"sparsity": 0.25, "method_args": {"mode": "uniform"} if method == "flap" else {}}
    cpu = _prune(method, "cpu", calib_ids, **settings)
    gpu = _prune(method, "cuda", calib_ids, **settings)
    shapes = {n: p.shape for n, p in cpu.model.named_parameters()}
    assert {n: p.shape for n, p in gpu.model.named_parameters()} == shapes
    assert shapes != {n: p.shape for n, p in tiny_model().named_parameters()}  # something was removed
    with torch.no_grad():
        ref = cpu.model(input_ids=calib_ids).logits
        out = gpu.model(input_ids=calib_ids.cuda()).logits.cpu()
    assert torch.allclose(out, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("bf16", [False, True])
def test_recovery_on_cuda_keeps_every_pruned_weight_zero(bf16, tmp_path):
    folder, text = save_tiny_llama(tmp_path / "llama"), write_text(tmp_path / "text.txt", 400)
    config = GBLMConfig(method="wanda", sparsity=0.5, calibration=str(text), num_samples=4, seqlen=16, device="cuda")
    pruner = GBLMPruner.from_pretrained(folder, config)
    pruner.prune(progress=False)
    zeros = _zeros(pruner)
    before = copy.deepcopy(pruner.model.state_dict())
    recovery = RecoveryConfig(
        source=str(text),
        max_steps=3,
        batch_size=2,
        seqlen=16,
        num_windows=8,
        heldout_windows=1,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        bf16=bf16,
        subset=["norm", "masklora"],
    )
    pruner.recover(recovery, progress=False)
    assert next(pruner.model.parameters()).device.type == "cuda"
    after = _zeros(pruner)
    assert all(bool(after[k][zeros[k]].all()) for k in zeros)  # every pruned position is still zero
    state = pruner.model.state_dict()
    assert any(not torch.equal(state[k], before[k]) for k in zeros)  # the merged adapters moved kept weights
    assert pruner.recovery["tokens"] == 3 * 2 * 16


@pytest.mark.parametrize("gradient_dtype", ["float32", "bfloat16"])
def test_blockwise_gradients_on_cuda_match_the_one_pass_sums(gradient_dtype, calib_ids):
    """The block-wise pass on the GPU: its sums (read back from disk onto the device) equal the one-pass sums up to
    the GPU kernels' summation order, and the pruning agrees."""
    from optimum_gblm import collect_gradients

    samples = [{"input_ids": calib_ids[i : i + 1], "labels": calib_ids[i : i + 1]} for i in range(calib_ids.shape[0])]
    sums = {}
    for flag in (False, True):
        config = GBLMConfig(method="gblm-obs", device="cuda", gradient_dtype=gradient_dtype, blockwise_gradients=flag)
        sums[flag] = collect_gradients(tiny_model().cuda(), config, dataloader=samples, progress=False)
    for norm in ("l1", "l2"):
        for name, value in sums[False].get(norm).items():
            got = sums[True].get(norm)[name]
            assert got.device.type == "cuda"
            rtol = 1e-4 if gradient_dtype == "float32" else 2e-2  # bf16: one rounding step of its products
            torch.testing.assert_close(got, value, rtol=rtol, atol=1e-6)
    one, blockwise = (_prune("gblm-obs", "cuda", calib_ids, blockwise_gradients=f) for f in (False, True))
    a, b = _zeros(one), _zeros(blockwise)
    assert sum(int((a[k] == b[k]).sum()) for k in a) / sum(v.numel() for v in a.values()) > 0.99
