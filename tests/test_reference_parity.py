"""Reference parity: a deliberately plain re-implementation of the reference Wanda / GBLM metrics and of the
per-row and N:M selection, written from docs/semantics.md and sharing no code with the package, must give the
package's masks exactly.

The plain version gets block i's linear inputs from a whole-model forward after blocks 0..i-1 were pruned
(quadratic in depth, but obviously right), accumulates a_j = (1/N) sum_n sum_t x^2 per sample, forms G from a
naive per-sample loop, and selects with a stable argsort per row / per group of M.
"""

import contextlib
import copy

import pytest
import torch

from optimum_gblm import GBLMConfig, GBLMPruner

LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


class _Stop(Exception):
    pass


def plain_block_inputs(model, block_index, samples):
    """Inputs of every targeted linear of one block, per sample, from full-model forwards (stopped after it)."""
    layer = model.model.layers[block_index]
    seen = {name: [] for name in LINEARS}
    handles = [
        layer.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen[n].append(i[0].detach()))
        for n in LINEARS
    ]
    handles.append(layer.register_forward_hook(lambda m, i, o: (_ for _ in ()).throw(_Stop())))
    with torch.no_grad():
        for ids in samples:
            with contextlib.suppress(_Stop):
                model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    return seen


def plain_gradients(model, samples, scale=100.0):
    """G1 = sum_n |c g_n| per targeted weight, from a naive per-sample loop."""
    model = copy.deepcopy(model)
    grads = {}
    for ids in samples:
        model.zero_grad()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        for b, layer in enumerate(model.model.layers):
            for n in LINEARS:
                g = (layer.get_submodule(n).weight.grad * scale).abs()
                key = f"model.layers.{b}.{n}"
                grads[key] = grads.get(key, 0) + g
    return grads


def plain_select(score, sparsity, pattern):
    """True = prune. Per row the floor(d_in * s) lowest; N:M: in each row the N lowest of every M columns."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    rows, cols = score.shape
    if pattern == "unstructured":
        k = int(cols * sparsity + 1e-9)
        for r in range(rows):
            mask[r, torch.argsort(score[r], stable=True)[:k]] = True
        return mask
    n, m = map(int, pattern.split(":"))
    for r in range(rows):
        for c in range(0, cols, m):
            mask[r, c + torch.argsort(score[r, c : c + m], stable=True)[:n]] = True
    return mask


def plain_prune(model, samples, method, sparsity, pattern, grads=None):
    masks = {}
    for b, layer in enumerate(model.model.layers):
        inputs = plain_block_inputs(model, b, samples)
        for n in LINEARS:
            linear = layer.get_submodule(n)
            a = torch.zeros(linear.in_features)
            for x in inputs[n]:
                a += (x.reshape(-1, x.shape[-1]) ** 2).sum(dim=0)
            a /= len(samples)
            score = linear.weight.abs() * a.sqrt()
            if method == "gblm":
                score = score + linear.weight.abs() * grads[f"model.layers.{b}.{n}"]
            mask = plain_select(score.detach(), sparsity, pattern)
            with torch.no_grad():
                linear.weight[mask] = 0
            masks[f"model.layers.{b}.{n}"] = mask
    return masks


def package_masks(model, samples, method, sparsity, pattern, num_samples, seqlen):
    config = GBLMConfig(
        method=method,
        sparsity=sparsity,
        pattern=pattern,
        num_samples=num_samples,
        seqlen=seqlen,
        device="cpu",
        batch_size=1,
    )
    pruner = GBLMPruner(model, config)
    pruner.prune(calibration=torch.cat(samples), progress=False)
    # The masks the pruning map keeps (bit-packed) must be exactly the zeros of the pruned weights.
    for target in pruner.targets():
        assert torch.equal(pruner.pruning_map.mask(target.name), target.weight() == 0), target.name
    return {t.name: pruner.pruning_map.mask(t.name) for t in pruner.targets()}


@pytest.mark.parametrize("method", ["wanda", "gblm"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_plain_reference_equals_package_on_tiny_llama(tiny_llama, calib_ids, method, pattern):
    samples = [calib_ids[i : i + 1] for i in range(calib_ids.shape[0])]
    grads = plain_gradients(tiny_llama, samples) if method == "gblm" else None
    expected = plain_prune(copy.deepcopy(tiny_llama), samples, method, 0.5, pattern, grads)
    got = package_masks(tiny_llama, samples, method, 0.5, pattern, len(samples), calib_ids.shape[1])
    for name, mask in expected.items():
        assert torch.equal(mask, got[name]), f"{name}: {int((mask != got[name]).sum())} weights differ"


@pytest.mark.slow
def test_plain_reference_wanda_equals_package_on_smollm2(smollm2):
    from optimum_gblm.data.text import build_token_calibration

    model, tokenizer, _ = smollm2
    ids = build_token_calibration(tokenizer, "offline-corpus", 4, 64, seed=0).input_ids
    samples = [ids[i : i + 1] for i in range(ids.shape[0])]
    dense_zeros = {t.name: t.weight() == 0 for t in GBLMPruner(model, GBLMConfig(method="wanda")).targets()}
    expected = plain_prune(copy.deepcopy(model), samples, "wanda", 0.5, "unstructured")
    got = package_masks(copy.deepcopy(model), samples, "wanda", 0.5, "unstructured", 4, 64)
    for name, mask in expected.items():
        # Zero weights of the dense model score 0 in both and are pruned first, so compare zero patterns.
        assert torch.equal(mask | dense_zeros[name], got[name]), f"{name}: {int((mask != got[name]).sum())} differ"
