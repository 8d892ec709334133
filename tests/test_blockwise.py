"""The block-wise gradient pass (`blockwise_gradients=True`): bit-identical sums to the one-pass collection on every
decoder family and a timm ViT, the same pruning, one block's sums in memory (the rest on disk, removed once let go),
clear refusals; and the per-block arguments the layer-by-layer passes now give every block."""

from __future__ import annotations

import gc
import tempfile
import weakref
from pathlib import Path

import pytest
import torch

from optimum_gblm import GBLMConfig, GBLMPruner, collect_gradients
from optimum_gblm.adapters import get_adapter
from optimum_gblm.gradients import blockwise
from optimum_gblm.pipelines.placement import IntermediatesStore
from optimum_gblm.pipelines.sequential import _same, capture_block_inputs
from optimum_gblm.planning import plan
from tests.conftest import tiny_model
from tests.helpers.tiny_models import image_classification_step, labelled_image_batches, tiny_vit
from tests.test_families import DECODER_FAMILIES, IDS, build


def _samples(ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": ids[i : i + 1], "labels": ids[i : i + 1]} for i in range(ids.shape[0])]


def _collect(model, samples, **config):
    cfg = GBLMConfig(method="gblm-obs", device="cpu", **config)  # l1 and l2
    return collect_gradients(model, cfg, dataloader=samples, progress=False)


def _assert_identical(expected, got) -> None:
    assert got.nsamples == expected.nsamples
    for norm in ("l1", "l2"):
        want, have = expected.get(norm), got.get(norm)
        assert list(have) == list(want)  # same modules, in the one-pass order
        for name, value in want.items():
            assert torch.equal(have[name], value), (norm, name)


@pytest.mark.parametrize("model_type", sorted(DECODER_FAMILIES))
def test_blockwise_sums_are_bit_identical_on_every_family(model_type):
    expected = _collect(build(model_type), _samples(IDS))
    got = _collect(build(model_type), _samples(IDS), blockwise_gradients=True)
    assert isinstance(got.l1, blockwise.DiskSums) and isinstance(got.l2sq, blockwise.DiskSums)
    _assert_identical(expected, got)


def test_blockwise_sums_on_a_timm_vit_with_a_custom_step():
    batches, step = labelled_image_batches(), image_classification_step
    cfg = GBLMConfig(method="gblm-obs", device="cpu")
    expected = collect_gradients(tiny_vit(depth=3), cfg, dataloader=batches, train_step=step, progress=False)
    cfg = GBLMConfig(method="gblm-obs", device="cpu", blockwise_gradients=True)
    got = collect_gradients(tiny_vit(depth=3), cfg, dataloader=batches, train_step=step, progress=False)
    _assert_identical(expected, got)


def test_blockwise_pruning_is_identical_and_leaves_no_files(calib_ids):
    pruned = {}
    for flag in (False, True):
        cfg = GBLMConfig(method="gblm-obs", device="cpu", num_samples=4, seqlen=16, blockwise_gradients=flag)
        pruned[flag] = GBLMPruner(tiny_model("llama"), cfg)
        pruned[flag].prune(calibration=calib_ids, progress=False)
    one, blocks = pruned[False], pruned[True]
    assert one.sparsities and blocks.sparsities == one.sparsities  # the gradient allocation, exactly
    assert len(set(one.sparsities.values())) > 1  # not a uniform allocation that any run would match
    for name in one.pruning_map.targets:
        assert torch.equal(blocks.pruning_map.mask(name), one.pruning_map.mask(name)), name
    for (name, a), b in zip(one.model.state_dict().items(), blocks.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert blocks.gradients.l2sq == {}  # the allocation's sums were let go after the allocation
    folder = blocks.gradients.l1.folder
    assert sorted(p.name for p in folder.iterdir()) == ["block0.safetensors", "block1.safetensors"]
    del pruned, blocks
    gc.collect()
    assert not folder.exists()  # the sums' folder goes with the accumulation


def test_blockwise_holds_one_block_of_sums_at_a_time(calib_ids, monkeypatch):
    """Every collector the block-wise pass opens holds only its own block's targets."""
    opened = []
    original = blockwise.GradientCollector

    def spy(model, targets, **kwargs):
        opened.append(sorted(targets))
        return original(model, targets, **kwargs)

    monkeypatch.setattr(blockwise, "GradientCollector", spy)
    model = tiny_model("llama", num_hidden_layers=3)
    _collect(model, _samples(calib_ids), blockwise_gradients=True)
    assert len(opened) == 3
    for block, names in zip((2, 1, 0), opened):  # from the last block to the first
        assert names and all(name.startswith(f"model.layers.{block}.") for name in names)


def test_blockwise_leaves_the_model_as_it_was(calib_ids):
    model = tiny_model("llama")
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    blocks = model.model.layers
    _collect(model, _samples(calib_ids), blockwise_gradients=True)
    assert model.model.layers is blocks and not model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_blockwise_skips_the_blocks_before_the_first_target(calib_ids):
    """With targets in the last block only, no earlier block is run backward (and the sums are still exact)."""
    cfg = GBLMConfig(method="gblm-obs", device="cpu", targets=[r"layers\.1\."])
    expected = collect_gradients(tiny_model("llama"), cfg, dataloader=_samples(calib_ids), progress=False)
    model = tiny_model("llama")
    calls = [0]
    model.model.layers[0].mlp.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    cfg = GBLMConfig(method="gblm-obs", device="cpu", targets=[r"layers\.1\."], blockwise_gradients=True)
    got = collect_gradients(model, cfg, dataloader=_samples(calib_ids), progress=False)
    assert calls[0] == calib_ids.shape[0] + 1  # the capture's one probe of the output form, then its forward only
    assert all(name.startswith("model.layers.1.") for name in got.l1)
    _assert_identical(expected, got)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"two_pass_gradients": True}, "blockwise_gradients=True and two_pass_gradients=True"),
        ({"gradient_checkpointing": True}, "blockwise_gradients=True and gradient_checkpointing=True"),
        ({"gradient_dtype": "float16"}, "cannot use gradient_dtype='float16'"),
    ],
)
def test_blockwise_refuses_options_it_cannot_combine(options, match):
    with pytest.raises(ValueError, match=match):
        GBLMConfig(method="gblm-obs", blockwise_gradients=True, **options)


def test_blockwise_refuses_a_cache_before_any_work(tmp_path, calib_ids):
    cfg = GBLMConfig(method="gblm-obs", device="cpu", blockwise_gradients=True)
    cache = tmp_path / "grads.safetensors"
    with pytest.raises(ValueError, match="blockwise_gradients=True cannot be combined with a gradient cache"):
        collect_gradients(tiny_model("llama"), cfg, dataloader=_samples(calib_ids), cache_path=cache, progress=False)
    cfg = GBLMConfig(method="gblm-obs", device="cpu", num_samples=4, seqlen=16, blockwise_gradients=True)
    pruner = GBLMPruner(tiny_model("llama"), cfg)
    with pytest.raises(ValueError, match="cannot use a gradient cache"):
        pruner.prune(calibration=calib_ids, gradients=cache, progress=False)
    assert not cache.exists()


def test_blockwise_refuses_router_losses_and_targets_outside_the_blocks(calib_ids):
    model = build("mixtral", output_router_logits=True)
    with pytest.raises(ValueError, match="router loss from every layer"):
        _collect(model, _samples(IDS), blockwise_gradients=True)
    model = tiny_model("llama", tie_word_embeddings=False)
    targets = {"lm_head": model.lm_head, "model.layers.0.mlp.up_proj": model.model.layers[0].mlp.up_proj}
    cfg = GBLMConfig(method="gblm-obs", device="cpu", blockwise_gradients=True)
    with pytest.raises(ValueError, match=r"every target inside the model's blocks; \['lm_head'\]"):
        collect_gradients(model, cfg, dataloader=_samples(calib_ids), targets=targets, progress=False)


def test_the_trainer_callback_refuses_a_blockwise_config():
    from optimum_gblm.gradients.trainer import GBLMGradientCallback

    with pytest.raises(ValueError, match="use collect_gradients\\(trainer=...\\) for the block-wise pass"):
        GBLMGradientCallback(GBLMConfig(method="gblm", blockwise_gradients=True))


def test_disk_sums_read_back_what_was_written(tmp_path):
    sums = blockwise.DiskSums("optimum-gblm-test-")
    a, b = torch.randn(3, 4), torch.randn(2, 2)
    sums.write(1, {"b": b})
    sums.write(0, {"a": a})
    sums.order(["a", "b"])
    assert list(sums) == ["a", "b"] and len(sums) == 2
    assert torch.equal(sums["a"], a) and torch.equal(sums["b"], b)
    folder = sums.folder
    del sums
    gc.collect()
    assert not folder.exists()


def test_planner_counts_one_block_of_sums():
    model = tiny_model("llama", num_hidden_layers=4)
    adapter = get_adapter(model)
    memory_plan = plan(model, adapter, GBLMConfig(method="gblm-obs", device="cpu"), device_type="cpu")
    one_pass = memory_plan.phase("gradients", "on device")
    blockwise_phase = memory_plan.phase("gradients", "blockwise_gradients")
    assert blockwise_phase.terms["accumulators"] * 4 == one_pass.terms["accumulators"]
    assert blockwise_phase.host < one_pass.host
    # A block-wise config is planned too (its own phase; pruning holds one block's selection sums).
    config = GBLMConfig(method="gblm-obs", device="cpu", blockwise_gradients=True)
    own = plan(model, adapter, config, device_type="cpu")
    assert own.phase("gradients", "blockwise_gradients").host == blockwise_phase.host
    held, all_sums = (p.phase("prune", "memory / device").terms["gradients"] for p in (own, memory_plan))
    assert held * 4 == all_sums


def test_from_pretrained_plans_and_prunes_a_blockwise_config(tmp_path, calib_ids):
    """The memory check before loading plans a block-wise config (a local checkpoint, as a user would pass)."""
    tiny_model("llama").save_pretrained(tmp_path / "dense")
    config = GBLMConfig(method="gblm-obs", device="cpu", num_samples=4, seqlen=16, blockwise_gradients=True)
    pruner = GBLMPruner.from_pretrained(str(tmp_path / "dense"), config, check_memory=True)
    pruner.prune(calibration=calib_ids, progress=False)
    assert isinstance(pruner.gradients.l1, blockwise.DiskSums)


# -- the per-block arguments of the layer-by-layer passes ------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "llama", "qwen2_moe"])
def test_every_block_gets_the_arguments_the_model_gives_it(model_type):
    """Sliding-window and global layers get different masks (Gemma 2) and rotary embeddings (Gemma 3): the capture
    records what the model's own loop passes to each block, not block 0's arguments for every block."""
    overrides = {"num_hidden_layers": 6} if model_type == "gemma3_text" else {}  # its 6th layer is global
    model = build(model_type, **overrides)
    adapter = get_adapter(model)
    seen: list[dict] = []
    handles = [
        block.register_forward_pre_hook(lambda m, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
        for block in adapter.blocks(model)
    ]
    with torch.no_grad():
        adapter.forward(model, IDS[:1])
    for handle in handles:
        handle.remove()
    with IntermediatesStore("cpu") as store, torch.no_grad():
        captured = capture_block_inputs(model, adapter, [IDS[:1]], store)
    assert len(captured) == len(seen)
    for index, kwargs in enumerate(seen):
        assert _same(captured[index][0], kwargs), index
    if model_type in ("gemma2", "gemma3_text"):  # the case the first block's arguments got wrong
        assert not all(_same(captured[0][0], captured[i][0]) for i in range(len(captured)))


def test_no_temporary_folders_are_left_behind(calib_ids):
    """The block inputs and output gradients go when the pass ends, the sums when the accumulation goes."""
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("optimum-gblm-*"))
    sums = _collect(tiny_model("llama"), _samples(calib_ids), blockwise_gradients=True)
    assert set(temp.glob("optimum-gblm-*")) - before == {sums.l1.folder, sums.l2sq.folder}
    del sums
    gc.collect()
    assert set(temp.glob("optimum-gblm-*")) <= before


# -- what the capture must leave as it was (review findings) ---------------------------------------------------------
def _tuple_decoder(model_type: str, layers: int = 5) -> torch.nn.Module:
    """Falcon and Bloom layers return tuples that the model's loop indexes (`outputs[0]`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    sizes = {"falcon": dict(num_attention_heads=4, num_hidden_layers=layers, new_decoder_architecture=False)}
    sizes["bloom"] = dict(n_head=4, n_layer=layers)
    config = AutoConfig.for_model(model_type, hidden_size=64, vocab_size=128, **sizes[model_type])
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", ["falcon", "bloom"])
def test_blocks_that_return_tuples_are_captured_and_collected(model_type):
    ids = IDS[:2]
    # Bloom's alibi tensor is shaped per batch (batch x heads), so its windows cannot share a block forward.
    config = GBLMConfig(method="wanda", device="cpu", num_samples=2, seqlen=16, batch_size=1)
    pruner = GBLMPruner(_tuple_decoder(model_type), config)
    pruner.prune(calibration=ids, progress=False)  # five layers: a bare tensor would lose a dimension per layer
    assert pruner.pruning_map.overall_sparsity > 0.49
    expected = _collect(_tuple_decoder(model_type), _samples(ids))
    _assert_identical(expected, _collect(_tuple_decoder(model_type), _samples(ids), blockwise_gradients=True))


@pytest.mark.parametrize("blockwise_first", [False, True])
def test_the_model_s_own_output_hooks_still_work_afterwards(blockwise_first):
    """transformers installs its output-capturing hooks (hidden states, router logits) at the first forward that
    asks for them; a capture or a block-wise pass run first must leave the real layers for them to find."""
    model = build("qwen2_moe", output_hidden_states=True)
    if blockwise_first:
        _collect(model, _samples(IDS), blockwise_gradients=True)
    else:
        GBLMPruner(model, GBLMConfig(method="wanda", device="cpu", num_samples=4, seqlen=16)).prune(
            IDS, progress=False
        )
    with torch.no_grad():
        out = model(input_ids=IDS[:1], use_cache=False, output_router_logits=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert len(out.router_logits) == model.config.num_hidden_layers and out.aux_loss is not None


def test_blockwise_refuses_train_mode(calib_ids):
    cfg = GBLMConfig(method="gblm-obs", device="cpu", blockwise_gradients=True)
    with pytest.raises(ValueError, match="cannot be combined with train mode"):
        collect_gradients(tiny_model("llama"), cfg, dataloader=_samples(calib_ids), train_mode=True, progress=False)


def test_only_one_block_of_sums_is_alive_when_the_next_is_allocated(calib_ids, monkeypatch):
    alive: list[weakref.ref] = []

    class Spy(blockwise.GradientCollector):
        def __enter__(self):
            gc.collect()
            assert not any(ref() is not None for ref in alive), "an earlier block's sums are still held"
            result = super().__enter__()
            alive.extend(weakref.ref(t) for store in (self.state.l1, self.state.l2sq) for t in store.values())
            return result

    monkeypatch.setattr(blockwise, "GradientCollector", Spy)
    _collect(tiny_model("llama", num_hidden_layers=3), _samples(calib_ids), blockwise_gradients=True)
    assert len(alive) == 2 * 3 * 7  # l1 and l2, three blocks, seven targets each: all seen, all let go in turn
