"""Per-sample gradient collection: equals a naive loop; Trainer, callback and custom-step paths; cache; errors."""

import ast
import copy
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainingArguments

from optimum_gblm import GBLMConfig, GBLMPruner, collect_gradients
from optimum_gblm.adapters import get_adapter
from optimum_gblm.gradients import (
    GradientAccumulation,
    GradientCacheMismatch,
    GradientCollector,
    NonFiniteGradientError,
)
from optimum_gblm.gradients.collector import per_sample_backward
from optimum_gblm.gradients.trainer import GBLMGradientCallback

SCALE = 100.0


def naive_accumulation(model, samples, scale=SCALE):
    """Reference strategy: keep every .grad, clone each per-sample gradient, add up afterwards."""
    targets = get_adapter(model).target_linears(model)
    l1 = {n: torch.zeros_like(m.weight) for n, m in targets.items()}
    l2 = {n: torch.zeros_like(m.weight) for n, m in targets.items()}
    model.eval()
    for ids in samples:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        for name, module in targets.items():
            g = module.weight.grad.clone() * scale
            l1[name] += g.abs()
            l2[name] += g * g
    model.zero_grad(set_to_none=True)
    return l1, {n: v.sqrt() for n, v in l2.items()}


def assert_close(a, b, rtol=1e-5):
    for name in a:
        err = (a[name] - b[name]).norm() / b[name].norm().clamp_min(1e-30)
        assert err < rtol, f"{name}: relative error {err:.2e}"


def samples_of(ids):
    return [ids[i : i + 1] for i in range(ids.shape[0])]


def batches(ids, size=2):
    return [{"input_ids": ids[i : i + size], "labels": ids[i : i + size]} for i in range(0, ids.shape[0], size)]


def _package_imports(package: Path) -> dict[str, set[str]]:
    """Module-level imports between the modules of a package (imports inside functions are lazy, so left out)."""
    graph = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        graph[path.stem] = {
            alias.name if node.module is None else node.module
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.level == 1
            for alias in node.names
        }
    return graph


def test_gradients_package_has_no_import_cycle_and_loads_the_trainer_lazily():
    import optimum_gblm.gradients as package

    graph = _package_imports(Path(package.__file__).parent)
    assert set(graph) == {
        "__init__",
        "accumulation",
        "blockwise",
        "cache",
        "collector",
        "distributed",
        "loop",
        "trainer",
    }
    assert "trainer" not in graph["__init__"] and "loop" not in graph["trainer"]
    for module in graph:  # depth-first search for a cycle through `module`
        seen, stack = set(), list(graph[module] - {"__init__"})
        while stack:
            name = stack.pop()
            assert name != module, f"import cycle through {module}"
            if name not in seen:
                seen.add(name)
                stack.extend(graph.get(name, set()) - {"__init__"})
    code = "import sys, optimum_gblm; assert 'optimum_gblm.gradients.trainer' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(package.__file__).parents[2])


@pytest.fixture
def config():
    return GBLMConfig(method="gblm", gradient_norm="l1", device="cpu", num_samples=4, seqlen=16)


def test_collector_equals_naive_loop_and_leaves_model_untouched(tiny_llama, calib_ids, config):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    flags = {n: p.requires_grad for n, p in tiny_llama.named_parameters()}
    tiny_llama.train()
    l1, l2 = naive_accumulation(copy.deepcopy(tiny_llama), samples_of(calib_ids))
    cfg = GBLMConfig(method="gblm-obs", device="cpu")  # needs l1 and l2
    acc = collect_gradients(tiny_llama, cfg, dataloader=batches(calib_ids), progress=False)
    assert acc.nsamples == 4
    assert_close(acc.get("l1"), l1)
    assert_close(acc.get("l2"), l2)
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())
    assert {n: p.requires_grad for n, p in tiny_llama.named_parameters()} == flags
    assert tiny_llama.training and all(p.grad is None for p in tiny_llama.parameters())


def test_l2_norm_is_read_per_module_and_follows_samples_added():
    acc = GradientAccumulation(scale=1.0, nsamples=1, l2sq={"a": torch.full((2, 2), 4.0), "b": torch.ones(3)})
    view = acc.get("l2")
    assert list(view) == ["a", "b"] and len(view) == 2 and torch.equal(view["a"], torch.full((2, 2), 2.0))
    assert not any(torch.is_tensor(v) for v in vars(view).values())  # holds no copy, only the accumulators' dict
    acc.l2sq["a"] += 5.0  # one more sample folded
    acc.nsamples += 1
    assert torch.equal(acc.get("l2")["a"], torch.full((2, 2), 3.0)) and torch.equal(view["a"], acc.get("l2")["a"])


def test_fp16_loss_scale_that_fell_to_one_stays_there(tiny_llama, calib_ids):
    l1, _ = naive_accumulation(copy.deepcopy(tiny_llama), samples_of(calib_ids[:1]))
    targets = get_adapter(tiny_llama).target_linears(tiny_llama)

    def loss():
        return tiny_llama(input_ids=calib_ids[:1], labels=calib_ids[:1]).loss

    fresh = GradientCollector(tiny_llama, targets, scale=SCALE, defer_fold=True)
    with fresh:
        per_sample_backward(fresh, loss, 0, fp16_scaling=True)
    assert fresh.loss_scale == 2.0**16  # a first sample starts dynamic loss scaling at 2^16
    lowered = GradientCollector(tiny_llama, targets, scale=SCALE, defer_fold=True)
    with lowered:
        lowered.loss_scale = 1.0  # where earlier overflows have brought it
        per_sample_backward(lowered, loss, 1, fp16_scaling=True)
    assert lowered.loss_scale == 1.0
    assert_close(fresh.state.l1, l1)
    assert_close(lowered.state.l1, l1)


def test_pruner_collect_gradients_uses_its_calibration(tiny_llama, calib_ids, config):
    l1, _ = naive_accumulation(copy.deepcopy(tiny_llama), samples_of(calib_ids))
    pruner = GBLMPruner(tiny_llama, config)
    pruner.calibration_data(calib_ids)
    acc = pruner.collect_gradients(progress=False)
    assert_close(acc.get("l1"), l1)


def test_state_restored_on_exception(tiny_llama, calib_ids, config):
    flags = {n: p.requires_grad for n, p in tiny_llama.named_parameters()}

    def failing_step(model, sample):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        collect_gradients(tiny_llama, config, dataloader=batches(calib_ids), train_step=failing_step, progress=False)
    assert {n: p.requires_grad for n, p in tiny_llama.named_parameters()} == flags
    assert not tiny_llama.training


def test_custom_train_step_path(tiny_llama, calib_ids, config):
    l1, _ = naive_accumulation(copy.deepcopy(tiny_llama), samples_of(calib_ids))

    def step(model, sample):
        return model(input_ids=sample, labels=sample).loss

    acc = collect_gradients(tiny_llama, config, dataloader=[calib_ids], train_step=step, progress=False)
    assert_close(acc.get("l1"), l1)


def _dataset(ids):
    return [{"input_ids": ids[i], "labels": ids[i]} for i in range(ids.shape[0])]


def test_trainer_path_equals_plain_path(tiny_llama, calib_ids, config, tmp_path):
    plain = collect_gradients(copy.deepcopy(tiny_llama), config, dataloader=batches(calib_ids), progress=False)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True)
    trainer = Trainer(model=tiny_llama, args=args, train_dataset=_dataset(calib_ids))
    acc = collect_gradients(config=config, trainer=trainer, progress=False)
    assert acc.nsamples == 4 and trainer.optimizer is None
    assert_close(acc.get("l1"), plain.get("l1"))
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())


def test_callback_path_equals_plain_path(tiny_llama, calib_ids, config, tmp_path):
    plain = collect_gradients(copy.deepcopy(tiny_llama), config, dataloader=batches(calib_ids), progress=False)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=1,
        num_train_epochs=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-2,
    )
    callback = GBLMGradientCallback(config)
    Trainer(model=tiny_llama, args=args, train_dataset=_dataset(calib_ids), callbacks=[callback]).train()
    assert callback.accumulation.nsamples == 4
    assert_close(callback.accumulation.get("l1"), plain.get("l1"))
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())


def test_callback_forwards_run_in_eval_mode(calib_ids, config, tmp_path):
    """The Trainer puts the model in train mode at every step; dropout must stay off while the callback collects."""
    from tests.conftest import tiny_model

    model = tiny_model(attention_dropout=0.5)
    plain = collect_gradients(copy.deepcopy(model), config, dataloader=batches(calib_ids), progress=False)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=1,
        num_train_epochs=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    callback = GBLMGradientCallback(config)
    Trainer(model=model, args=args, train_dataset=_dataset(calib_ids), callbacks=[callback]).train()
    assert callback.accumulation.nsamples == 4
    assert_close(callback.accumulation.get("l1"), plain.get("l1"))
    model.train()
    model(input_ids=calib_ids[:1])
    assert model.training  # the eval-mode hook is gone after training


def _per_sample_args(tmp_path, **overrides):
    """Trainer arguments for the callback: one sample per backward, one epoch, no checkpoints."""
    base = dict(per_device_train_batch_size=1, num_train_epochs=1, report_to=[], use_cpu=True, save_strategy="no")
    return TrainingArguments(output_dir=str(tmp_path), **{**base, **overrides})


class FixedScaler:
    """Stand-in for accelerate's AMP GradScaler with a constant loss scale: `accelerator.backward` multiplies
    every loss by it, and the optimizer step goes through it."""

    def __init__(self, scale: float) -> None:
        self.value = scale

    def get_scale(self) -> float:
        return self.value

    def is_enabled(self) -> bool:
        return True

    def scale(self, loss):
        return loss * self.value

    def step(self, optimizer, closure=None):
        return optimizer.step(closure)

    def update(self, new_scale=None) -> None:
        pass


def _with_scaler(trainer, scaler):
    # A CPU fp32 Trainer has no scaler; set one before train() so that accelerate also wraps the optimizer with it.
    trainer.accelerator.scaler = scaler
    return trainer


def test_callback_divides_by_the_trainer_loss_scale(tiny_llama, calib_ids, config, tmp_path):
    plain = collect_gradients(copy.deepcopy(tiny_llama), config, dataloader=batches(calib_ids), progress=False)
    callback = GBLMGradientCallback(config)
    trainer = Trainer(
        model=tiny_llama, args=_per_sample_args(tmp_path), train_dataset=_dataset(calib_ids), callbacks=[callback]
    )
    _with_scaler(trainer, FixedScaler(1024.0)).train()
    assert callback.accumulation.nsamples == 4
    assert_close(callback.accumulation.get("l1"), plain.get("l1"))


def test_callback_with_a_real_grad_scaler_steps_without_changing_weights(tiny_llama, calib_ids, config, tmp_path):
    """torch's GradScaler refuses to step an optimizer that saw no gradient ("No inf checks were recorded")."""
    plain = collect_gradients(copy.deepcopy(tiny_llama), config, dataloader=batches(calib_ids), progress=False)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    callback = GBLMGradientCallback(config)
    trainer = Trainer(
        model=tiny_llama,
        args=_per_sample_args(tmp_path, learning_rate=1e-2),
        train_dataset=_dataset(calib_ids),
        callbacks=[callback],
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _with_scaler(trainer, scaler).train()
    assert callback.accumulation.nsamples == 4
    assert_close(callback.accumulation.get("l1"), plain.get("l1"))
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())
    assert scaler.get_scale() == 1024.0  # no step was seen as an overflow
    params = {id(p) for p in tiny_llama.parameters()}
    assert all(id(p) in params for group in trainer.optimizer.param_groups for p in group["params"])


class FirstStepOverflows(Trainer):
    """Gives the first sample a NaN gradient (finite loss), as an fp16 overflow would."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        self.seen = [*getattr(self, "seen", []), inputs["input_ids"].cpu()]
        if len(self.seen) == 1:
            weight = model.get_submodule("model.layers.1.mlp.up_proj").weight
            loss = loss + 0 * torch.sqrt(weight - weight.detach()).sum()
        return loss


def test_callback_skips_an_overflowed_sample_and_the_scaler_backs_off(tiny_llama, calib_ids, config, tmp_path):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    model = copy.deepcopy(tiny_llama)
    trainer = FirstStepOverflows(model=model, args=_per_sample_args(tmp_path), train_dataset=_dataset(calib_ids))
    callback = GBLMGradientCallback(config, trainer=trainer)
    trainer.add_callback(callback)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _with_scaler(trainer, scaler).train()
    assert callback.skipped == 1 and callback.accumulation.nsamples == 3
    assert scaler.get_scale() == 512.0  # the overflowed step was skipped and the scale backed off once
    rest = torch.cat(trainer.seen[1:])
    plain = collect_gradients(tiny_llama, config, dataloader=batches(rest, size=3), progress=False)
    assert_close(callback.accumulation.get("l1"), plain.get("l1"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_device_train_batch_size": 2}, "per_device_train_batch_size=1"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps=1"),
    ],
)
def test_callback_refuses_non_per_sample_settings(tiny_llama, calib_ids, config, tmp_path, kwargs, message):
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, **{"per_device_train_batch_size": 1, **kwargs}
    )
    trainer = Trainer(
        model=tiny_llama, args=args, train_dataset=_dataset(calib_ids), callbacks=[GBLMGradientCallback(config)]
    )
    with pytest.raises(ValueError, match=message):
        trainer.train()


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_after_interruption_equals_uninterrupted(tiny_llama, calib_ids, config, tmp_path):
    ids = torch.cat([calib_ids, calib_ids.flip(0)])
    full = collect_gradients(copy.deepcopy(tiny_llama), config, dataloader=[ids], progress=False)
    cache = tmp_path / "grads.safetensors"
    calls = {"n": 0}

    def flaky(model, sample):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return model(input_ids=sample, labels=sample).loss

    with pytest.raises(KeyboardInterrupt):
        collect_gradients(
            tiny_llama,
            config,
            dataloader=[ids],
            train_step=flaky,
            cache_path=cache,
            checkpoint_every=2,
            progress=False,
        )
    from optimum_gblm.gradients.cache import read_metadata

    assert read_metadata(cache)["complete"] == "false" and read_metadata(cache)["nsamples"] == "4"
    resumed = collect_gradients(
        tiny_llama, config, dataloader=[ids], cache_path=cache, checkpoint_every=2, progress=False
    )
    assert resumed.nsamples == 8
    assert all(torch.equal(resumed.l1[k], full.l1[k]) for k in full.l1)
    # A complete cache is reused as is.
    again = collect_gradients(tiny_llama, config, dataloader=[ids], cache_path=cache, progress=False)
    assert all(torch.equal(again.l1[k], full.l1[k]) for k in full.l1)


def test_cache_for_other_model_or_calibration_is_refused_and_left_intact(tiny_llama, calib_ids, config, tmp_path):
    from tests.conftest import tiny_model

    cache = tmp_path / "grads.safetensors"
    collect_gradients(tiny_llama, config, dataloader=[calib_ids], cache_path=cache, progress=False)
    digest = _digest(cache)
    with pytest.raises(GradientCacheMismatch, match="model_fingerprint"):
        collect_gradients(tiny_model(seed=5), config, dataloader=[calib_ids], cache_path=cache, progress=False)
    with pytest.raises(GradientCacheMismatch, match="calibration_fingerprint"):
        collect_gradients(tiny_llama, config, dataloader=[calib_ids + 1], cache_path=cache, progress=False)
    with pytest.raises(GradientCacheMismatch, match="norms"):
        collect_gradients(
            tiny_llama,
            GBLMConfig(gradient_norm="l2", device="cpu"),
            dataloader=[calib_ids],
            cache_path=cache,
            progress=False,
        )
    assert _digest(cache) == digest


def test_pruner_refuses_mismatching_cache(tiny_llama, calib_ids, config, tmp_path):
    cache = tmp_path / "g.safetensors"
    GBLMPruner(copy.deepcopy(tiny_llama), config).prune(calibration=calib_ids, gradients=cache, progress=False)
    with pytest.raises(GradientCacheMismatch):
        GBLMPruner(tiny_llama, config).prune(calibration=calib_ids[:2], gradients=cache, progress=False)


def test_bad_input_errors(tiny_llama, calib_ids, config):
    with pytest.raises(ValueError, match="empty"):
        collect_gradients(tiny_llama, config, dataloader=[], progress=False)
    with pytest.raises(ValueError, match="no 'labels'"):
        collect_gradients(tiny_llama, config, dataloader=[{"input_ids": calib_ids}], progress=False)
    target = "model.layers.1.mlp.up_proj"

    def nan_step(model, sample):
        weight = model.get_submodule(target).weight
        # finite loss, NaN gradient: d sqrt(u)/du at u = 0 is inf, times the zero upstream gradient
        return model(input_ids=sample, labels=sample).loss + 0 * torch.sqrt(weight - weight.detach()).sum()

    with pytest.raises(NonFiniteGradientError, match=rf"module '{target}' at calibration samples 0\.\.3"):
        collect_gradients(tiny_llama, config, dataloader=[calib_ids], train_step=nan_step, progress=False)


def test_bf16_autocast_on_cpu_is_close_to_fp32(tiny_llama, calib_ids):
    fp32 = collect_gradients(
        copy.deepcopy(tiny_llama), GBLMConfig(device="cpu"), dataloader=[calib_ids], progress=False
    )
    bf16 = collect_gradients(
        tiny_llama, GBLMConfig(device="cpu", gradient_dtype="bfloat16"), dataloader=[calib_ids], progress=False
    )
    assert_close(bf16.get("l1"), fp32.get("l1"), rtol=0.1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_mixed_precision_gives_fp32_masks(dtype, calib_ids):
    from tests.conftest import tiny_model

    masks = {}
    for name in ("float32", dtype):
        cfg = GBLMConfig(method="gblm", device="cuda", gradient_dtype=name, num_samples=4, seqlen=16)
        pruner = GBLMPruner(tiny_model(), cfg)
        pruner.prune(calibration=calib_ids, progress=False)
        masks[name] = {k: (v == 0).cpu() for k, v in pruner.model.state_dict().items() if k.endswith("proj.weight")}
    agree = sum(int((masks["float32"][k] == masks[dtype][k]).sum()) for k in masks["float32"])
    total = sum(v.numel() for v in masks["float32"].values())
    assert agree / total > 0.995


@pytest.mark.gpu
def test_cuda_fp16_trainer_callback_matches_fp32_plain_path(calib_ids, tmp_path):
    from tests.conftest import tiny_model

    config = GBLMConfig(method="gblm", gradient_norm="l1", device="cuda", num_samples=4, seqlen=16)
    model = tiny_model().cuda()
    plain = collect_gradients(copy.deepcopy(model), config, dataloader=batches(calib_ids), progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callback = GBLMGradientCallback(config)
    args = _per_sample_args(tmp_path, use_cpu=False, fp16=True, learning_rate=1e-2)
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(calib_ids), callbacks=[callback])
    trainer.train()
    assert trainer.accelerator.scaler is not None and trainer.accelerator.scaler.is_enabled()
    assert callback.skipped == 0 and callback.accumulation.nsamples == 4
    assert_close(callback.accumulation.get("l1"), plain.get("l1"), rtol=1e-2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    params = {id(p) for p in model.parameters()}
    assert all(id(p) in params for group in trainer.optimizer.param_groups for p in group["params"])


def test_default_step_looks_up_the_adapter_once(tiny_llama, calib_ids, config, monkeypatch):
    """The adapter used to be rebuilt for every calibration sample (a ViT adapter reads its data config each time)."""
    import optimum_gblm.adapters as adapters

    calls = []
    real = adapters.get_adapter
    monkeypatch.setattr(adapters, "get_adapter", lambda model: calls.append(1) or real(model))
    acc = collect_gradients(tiny_llama, config, dataloader=[calib_ids], progress=False)
    assert acc.nsamples == calib_ids.shape[0] == 4
    assert len(calls) == 2  # once for the default targets, once for the loss: not once per sample


# -- the cache round trip: a cache written from a dataloader or a Trainer is reused by the pruner -----------------
def _cache_reused(caplog) -> bool:
    return any("Reusing complete gradient cache" in r.getMessage() for r in caplog.records)


def _trainer(model, ids, tmp_path, batch_size=2):
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=batch_size, report_to=[], use_cpu=True
    )
    return Trainer(model=model, args=args, train_dataset=_dataset(ids))


def test_readme_gradient_cache_snippet_writes_then_reuses_the_cache(tiny_llama, calib_ids, config, tmp_path, caplog):
    """The README's snippet, run as written, on a tiny LLaMA and a tiny Trainer instead of a real model."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in readme.split("```python")[1:] if "collect_gradients(" in b]
    assert len(blocks) == 1, "the README has one gradient-cache snippet"
    snippet = blocks[0].split("```", 1)[0]
    model = tiny_llama
    trainer = _trainer(model, calib_ids, tmp_path)  # Trainer sets config.use_cache=False: the model is the same
    caplog.set_level("INFO", logger="optimum_gblm")
    namespace = {"model": model, "config": config, "trainer": trainer}
    cwd = Path.cwd()
    try:
        import os

        os.chdir(tmp_path)
        exec(compile(snippet, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    cache = tmp_path / "grads.safetensors"
    assert cache.is_file(), "the snippet writes the cache it then reuses"
    assert _cache_reused(caplog), "the pruner collected gradients again instead of reusing the cache"
    assert namespace["pruner"].pruning_map is not None


def test_dataloader_cache_is_reused_by_prune_with_the_same_tokens(tiny_llama, calib_ids, config, tmp_path, caplog):
    """The fingerprint is of the tokens (in any order), not of the container: attention masks and labels of the
    dataloader's batches, the batch size and a shuffled order do not matter."""
    from torch.utils.data import DataLoader

    cache = tmp_path / "grads.safetensors"
    # Saving fills in config.architectures and config.dtype, as every model loaded from a folder or the Hub has them.
    tiny_llama.save_pretrained(tmp_path / "saved")
    shuffled = calib_ids[torch.tensor([2, 0, 3, 1])]
    batches_with_masks = [{**b, "attention_mask": torch.ones_like(b["input_ids"])} for b in batches(shuffled, 3)]
    collect_gradients(
        copy.deepcopy(tiny_llama), config, dataloader=batches_with_masks, cache_path=cache, progress=False
    )
    digest = _digest(cache)
    caplog.set_level("INFO", logger="optimum_gblm")
    for calibration in (calib_ids, DataLoader(_dataset(calib_ids), batch_size=2), _dataset(calib_ids)):
        caplog.clear()
        pruner = GBLMPruner(copy.deepcopy(tiny_llama), config)
        pruner.prune(calibration=calibration, gradients=cache, progress=False)
        assert _cache_reused(caplog), type(calibration).__name__
    assert _digest(cache) == digest
    trainer = _trainer(copy.deepcopy(tiny_llama), calib_ids, tmp_path)
    assert collect_gradients(config=config, trainer=trainer, cache_path=cache, progress=False).nsamples == 4
    assert _cache_reused(caplog) and _digest(cache) == digest
    # in a later run, the same weights loaded from a folder (config._name_or_path set) are the same model
    caplog.clear()
    GBLMPruner.from_pretrained(str(tmp_path / "saved"), config).prune(calib_ids, gradients=cache, progress=False)
    assert _cache_reused(caplog) and _digest(cache) == digest


def test_prune_turns_samples_of_token_ids_into_a_token_calibration(tiny_llama, calib_ids, config):
    from torch.utils.data import DataLoader

    from optimum_gblm.data.text import TokenCalibration

    expected = TokenCalibration(calib_ids).fingerprint()
    pruner = GBLMPruner(tiny_llama, config)
    for data in (
        DataLoader(_dataset(calib_ids), batch_size=3),
        list(calib_ids),
        [{"input_ids": row.tolist()} for row in calib_ids],
        {"input_ids": calib_ids, "attention_mask": torch.ones_like(calib_ids)},
    ):
        calib = pruner.adapter.make_calibration(data, config)
        assert isinstance(calib, TokenCalibration) and calib.fingerprint() == expected
        assert torch.equal(calib.input_ids, calib_ids)
    padded = {"input_ids": calib_ids, "attention_mask": torch.ones_like(calib_ids)}
    padded["attention_mask"][1, -3:] = 0
    with pytest.raises(ValueError, match="padding"):
        pruner.adapter.make_calibration([padded], config)
    with pytest.raises(ValueError, match=r"same length.*\[12, 16\]"):
        pruner.adapter.make_calibration([calib_ids[0], calib_ids[1, :12]], config)
    with pytest.raises(ValueError, match="input_ids"):
        pruner.adapter.make_calibration([{"pixel_values": calib_ids}], config)


def test_collect_gradients_refuses_a_model_that_is_not_the_trainers(tiny_llama, calib_ids, config, tmp_path):
    from tests.conftest import tiny_model

    trainer = _trainer(tiny_llama, calib_ids, tmp_path)
    with pytest.raises(ValueError, match="trainer.model"):
        collect_gradients(tiny_model(seed=3), config, trainer=trainer, progress=False)


def test_caches_of_fingerprint_version_1_are_still_reused(tiny_llama, calib_ids, config, tmp_path, caplog):
    """Caches written before calibration fingerprints ignored sample order (ordered windows, config runtime flags
    in the model hash) still match the run that wrote them."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from optimum_gblm.gradients.cache import model_fingerprint
    from optimum_gblm.targets import target_modules
    from optimum_gblm.utils import tensor_fingerprint

    cache = tmp_path / "grads.safetensors"
    pruner = GBLMPruner(copy.deepcopy(tiny_llama), config)
    pruner.calibration_data(calib_ids)
    pruner.collect_gradients(cache_path=cache, progress=False)
    with safe_open(str(cache), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    version1 = {k: v for k, v in meta.items() if k != "fingerprint_version" and not k.startswith("calibration_")}
    version1["model_fingerprint"] = model_fingerprint(tiny_llama, target_modules(pruner.targets()), legacy=True)
    version1["calibration_fingerprint"] = tensor_fingerprint(calib_ids.long())
    assert version1["calibration_fingerprint"] != meta["calibration_fingerprint"]
    save_file(tensors, str(cache), metadata=version1)
    caplog.set_level("INFO", logger="optimum_gblm")
    GBLMPruner(copy.deepcopy(tiny_llama), config).prune(calibration=calib_ids, gradients=cache, progress=False)
    assert _cache_reused(caplog)


# -- cache errors: the file is named, the reason given, the file left untouched ----------------------------------
def test_truncated_cache_is_named_and_left_untouched(tiny_llama, calib_ids, config, tmp_path):
    from optimum_gblm.gradients import GradientCacheError

    cache = tmp_path / "grads.safetensors"
    collect_gradients(copy.deepcopy(tiny_llama), config, dataloader=[calib_ids], cache_path=cache, progress=False)
    data = cache.read_bytes()
    for size in (5, 100, len(data) // 2):
        cache.write_bytes(data[:size])
        for run in (
            lambda: collect_gradients(tiny_llama, config, dataloader=[calib_ids], cache_path=cache, progress=False),
            lambda: GBLMPruner(tiny_llama, config).prune(calibration=calib_ids, gradients=cache, progress=False),
        ):
            with pytest.raises(GradientCacheError) as error:
                run()
            message = str(error.value)
            assert str(cache) in message and "not a complete optimum-gblm gradient cache" in message, message
            assert "delete it" in message and "another cache path" in message
            assert cache.read_bytes() == data[:size]


def test_calibration_mismatch_names_the_differing_settings(tiny_llama, tmp_path, monkeypatch):
    from optimum_gblm.gradients.cache import calibration_settings, check_cache_settings, config_source
    from tests.helpers.tiny_models import tiny_tokenizer, write_text

    text = write_text(tmp_path / "text.txt")
    cache = tmp_path / "grads.safetensors"

    def pruner(calibration=str(text), **settings):
        cfg = GBLMConfig(
            method="gblm", device="cpu", calibration=calibration, **{"num_samples": 2, "seqlen": 16, **settings}
        )
        return GBLMPruner(copy.deepcopy(tiny_llama), cfg, tokenizer=tiny_tokenizer())

    monkeypatch.chdir(tmp_path)
    pruner("text.txt", seed=0).collect_gradients(cache_path=cache, progress=False)  # a relative path ...
    digest = _digest(cache)
    settings = calibration_settings(config_source(str(text)), 2, 16, 0)  # ... is the same source as the absolute one
    assert check_cache_settings(cache, settings, ("l1",))["calibration_source"] == str(text.resolve())
    with pytest.raises(GradientCacheMismatch, match="calibration_seed: cache has '0', this run needs '1'"):
        check_cache_settings(cache, calibration_settings(config_source(str(text)), 2, 16, 1), ("l1",))
    (tmp_path / "c4").mkdir()  # a preset stays a preset, whatever the working directory holds
    assert config_source("c4") == "c4"
    with pytest.raises(
        GradientCacheMismatch, match=r"calibration_fingerprint.*seed '0' in the cache, '1' here"
    ) as error:
        pruner(seed=1).collect_gradients(cache_path=cache, progress=False)
    assert "num_samples" not in str(error.value) and "seqlen" not in str(error.value)
    with pytest.raises(GradientCacheMismatch, match=r"seqlen '16' in the cache, '12' here"):
        pruner(seed=0, seqlen=12).collect_gradients(cache_path=cache, progress=False)
    assert _digest(cache) == digest
