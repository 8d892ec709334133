"""Gradient checkpointing in the gradient pass: it really recomputes (also in eval mode, where transformers' own
checkpointing is inactive), gives the same accumulators, keeps dropout off and leaves the model as it was."""

from __future__ import annotations

import pytest
import torch

from optimum_gblm import GBLMConfig, GBLMPruner, collect_gradients
from optimum_gblm.gradients.loop import checkpointed_blocks
from tests.conftest import tiny_model
from tests.helpers.tiny_models import image_classification_step, labelled_image_batches, tiny_vit


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _collect(model, ids, checkpointing: bool, **kwargs):
    cfg = GBLMConfig(method="gblm-obs", device="cpu")  # l1 and l2
    samples = [{"input_ids": ids[i : i + 1], "labels": ids[i : i + 1]} for i in range(ids.shape[0])]
    return collect_gradients(
        model, cfg, dataloader=samples, gradient_checkpointing=checkpointing, progress=False, **kwargs
    )


@pytest.mark.parametrize("train_mode", [False, True])
def test_checkpointing_recomputes_and_gives_the_same_accumulators(calib_ids, train_mode):
    plain, checkpointed = tiny_model("llama"), tiny_model("llama")
    mlp_calls = _count_calls(checkpointed.model.layers[0].self_attn.q_proj)
    expected = _collect(plain, calib_ids, False, train_mode=train_mode)
    got = _collect(checkpointed, calib_ids, True, train_mode=train_mode)
    # Each sample's block runs twice: the forward and its recomputation in the backward (which stops early, once
    # the saved tensors are back, so count a module at the start of the block).
    assert mlp_calls[0] == 2 * calib_ids.shape[0]
    for norm in ("l1", "l2"):
        for name, value in expected.get(norm).items():
            torch.testing.assert_close(got.get(norm)[name], value, rtol=1e-6, atol=0)
    # The model is left as it was: no instance forward left behind, mode unchanged, no gradients.
    assert all("forward" not in vars(block) for block in checkpointed_blocks(checkpointed))
    assert not checkpointed.training and all(p.grad is None for p in checkpointed.parameters())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.modules())


def test_checkpointing_keeps_dropout_off_in_eval_mode(calib_ids):
    # With dropout active, two runs would differ; the pass runs in eval mode, checkpointed or not.
    plain = tiny_model("llama", attention_dropout=0.5)
    checkpointed = tiny_model("llama", attention_dropout=0.5)
    training = []
    checkpointed.model.layers[0].self_attn.register_forward_hook(lambda m, *_: training.append(m.training))
    expected = _collect(plain, calib_ids, False)
    got = _collect(checkpointed, calib_ids, True)
    assert training and not any(training)
    for name, value in expected.get("l1").items():
        torch.testing.assert_close(got.get("l1")[name], value, rtol=1e-6, atol=0)


def test_checkpointing_a_timm_vit():
    batches, step = labelled_image_batches(), image_classification_step
    cfg = GBLMConfig(method="gblm", device="cpu")
    plain, checkpointed = tiny_vit(), tiny_vit()
    calls = _count_calls(checkpointed.blocks[1].attn.qkv)
    expected = collect_gradients(plain, cfg, dataloader=batches, train_step=step, progress=False)
    got = collect_gradients(
        checkpointed, cfg, dataloader=batches, train_step=step, gradient_checkpointing=True, progress=False
    )
    assert calls[0] == 8
    for name, value in expected.get("l1").items():
        torch.testing.assert_close(got.get("l1")[name], value, rtol=1e-6, atol=0)


def test_checkpointing_a_model_without_blocks_is_refused_clearly():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="gradient checkpointing needs .* Sequential has neither"):
        checkpointed_blocks(model)


def test_config_option_reaches_the_pruner_pass(calib_ids):
    model = tiny_model("llama")
    calls = _count_calls(model.model.layers[1].self_attn.q_proj)
    cfg = GBLMConfig(method="gblm", device="cpu", num_samples=4, seqlen=16, gradient_checkpointing=True)
    pruner = GBLMPruner(model, cfg)
    pruner.calibration_data(calib_ids)
    pruner.collect_gradients(progress=False)
    assert calls[0] == 2 * calib_ids.shape[0]
    assert GBLMConfig.from_dict(cfg.to_dict()).gradient_checkpointing is True


def test_a_block_s_own_forward_wrapper_is_restored(calib_ids):
    # accelerate's hooks (device maps, offloading) replace a module's forward with an instance attribute.
    model = tiny_model("llama")
    block = model.model.layers[0]
    calls = []

    def hooked(*args, **kwargs):
        calls.append(1)
        return type(block).forward(block, *args, **kwargs)

    block.forward = hooked
    _collect(model, calib_ids, True)
    assert vars(block)["forward"] is hooked
    assert len(calls) == 2 * calib_ids.shape[0]  # called through the checkpoint: forward and recomputation
