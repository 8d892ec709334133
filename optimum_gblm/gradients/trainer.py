"""transformers.Trainer integration: reuse a Trainer for the gradient pass, or collect during `trainer.train()`."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ..configuration import GBLMConfig
from ..fields import OptionError
from ..targets import target_weight
from .accumulation import GradientAccumulation, required_norms
from .collector import GradientCollector

logger = logging.getLogger(__name__)


def _eval_before_forward(module: nn.Module, args: tuple) -> None:
    # `Trainer.training_step` calls `model.train()` before every forward; undo it so dropout / drop-path stay off
    # and every sample sees the same deterministic model as the plain path.
    module.eval()


def trainer_collection_args(trainer: Any, gradient_checkpointing: bool) -> tuple:
    """(model, dataloader, loss step, autocast factory, gradient checkpointing) taken from a Trainer.

    The Trainer's own `compute_loss` (so custom losses and label handling apply), input preparation
    (device placement) and accelerator autocast are used; no optimizer or scheduler is created.
    """
    model = trainer.model

    def step(model: nn.Module, sample: dict) -> Any:
        inputs = trainer._prepare_inputs(sample)
        return trainer.compute_loss(model, inputs)

    def autocast() -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(trainer.accelerator.autocast())
        stack.enter_context(trainer.compute_loss_context_manager())
        return stack

    use_ckpt = gradient_checkpointing or bool(getattr(trainer.args, "gradient_checkpointing", False))
    return model, trainer.get_train_dataloader(), step, autocast, use_ckpt


class GBLMGradientCallback(TrainerCallback):
    """Collect GBLM gradient accumulations while a Trainer runs its own loop.

    Every backward of `trainer.train()` is folded as one sample, so the Trainer must see one sample per
    backward with an unscaled loss: `per_device_train_batch_size=1` and `gradient_accumulation_steps=1` (the
    Trainer divides accumulated micro-batch losses, which would change the per-sample norms). Only the targeted
    linear weights get gradients, and each gradient is freed as soon as it is folded, so the optimizer finds no
    gradient and no weight changes. Every forward runs in eval mode (dropout off), as in the plain path, although
    the Trainer switches the model to train mode at each step. Results: `callback.accumulation`.

    fp16 (an AMP grad scaler): accelerate multiplies every loss by the scaler's current loss scale, and each
    gradient is divided by it when folded. The scaler is `trainer.accelerator.scaler` when `trainer=` is given,
    else the one accelerate attached to the optimizer that the Trainer passes to its callbacks. A scaler refuses
    to step an optimizer without any gradient, so the optimizer gets a one-element placeholder parameter for the
    duration of training (removed on train end), whose gradient is zero, or inf when the sample's gradients
    overflowed: the scaler then skips that step and lowers its scale as in plain fp16 training, and the sample
    is not counted (`callback.skipped`).
    """

    def __init__(
        self,
        config: GBLMConfig | None = None,
        targets: dict[str, nn.Module] | None = None,
        trainer: Any | None = None,
    ) -> None:
        self.config = config or GBLMConfig()
        if self.config.blockwise_gradients:
            raise OptionError(
                "blockwise_gradients",
                "{flag} runs its own block-by-block pass; the callback folds the gradients of the Trainer's own "
                "backward passes: use collect_gradients(trainer=...) for the block-wise pass",
            )
        self.targets = targets
        self.trainer = trainer
        self.collector: GradientCollector | None = None
        self.accumulation: GradientAccumulation | None = None
        self.skipped = 0
        self._sample = 0
        self._eval_hook: Any = None
        self._optimizer: Any = None
        self._placeholder: nn.Parameter | None = None
        self._overflow_marker: torch.Tensor | None = None

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: nn.Module | None = None,
        optimizer: Any | None = None,
        **kwargs: Any,
    ):
        if args.per_device_train_batch_size != 1:
            raise ValueError(
                "GBLMGradientCallback needs per-sample backward passes: set per_device_train_batch_size=1 "
                f"(got {args.per_device_train_batch_size})"
            )
        if args.gradient_accumulation_steps != 1:
            raise ValueError(
                "GBLMGradientCallback needs unscaled per-sample losses: set gradient_accumulation_steps=1 "
                f"(got {args.gradient_accumulation_steps}; the Trainer divides micro-batch losses)"
            )
        if model is None:
            raise ValueError("GBLMGradientCallback did not receive the model from the Trainer")
        from ..adapters import get_adapter

        targets = self.targets or get_adapter(model).target_linears(model, self.config.targets, self.config.ignore)
        self._sample = self.skipped = 0
        scaler = (
            getattr(self.trainer.accelerator, "scaler", None) if self.trainer else getattr(optimizer, "scaler", None)
        )
        scaling = scaler is not None and scaler.is_enabled()
        if scaling:
            device = target_weight(next(iter(targets.values()))).device
            self._add_placeholder(optimizer or getattr(self.trainer, "optimizer", None), device)
        self.collector = GradientCollector(
            model,
            targets,
            norms=required_norms(self.config),
            scale=self.config.gradient_scale,
            defer_fold=scaling,  # an overflowed sample is dropped whole, not folded in part
            loss_scaler=scaler if scaling else None,
            overflow_marker=self._overflow_marker,
        )
        self.collector.__enter__()
        self._eval_hook = model.register_forward_pre_hook(_eval_before_forward)

    def _add_placeholder(self, optimizer: Any, device: torch.device) -> None:
        if optimizer is None:
            raise ValueError("GBLMGradientCallback needs the Trainer's optimizer to step its fp16 grad scaler")
        self._optimizer = optimizer
        self._placeholder = nn.Parameter(torch.zeros(1, device=device))
        self._overflow_marker = torch.zeros(1, device=device)
        # Appended to an existing group: a new group would not match the lr scheduler's per-group lists.
        optimizer.param_groups[0]["params"].append(self._placeholder)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any):
        if self._placeholder is not None:
            self._placeholder.grad = self._overflow_marker.zero_()

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
        self._end_sample()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any):
        self._end_sample()

    def _end_sample(self) -> None:
        if self.collector is None or not self.collector.sample_started:
            return
        if not self.collector.end_sample(self._sample):
            self.skipped += 1
            logger.warning(
                "GBLMGradientCallback: fp16 gradients of sample %d overflowed at loss scale %g; sample skipped",
                self._sample,
                self.collector.loss_scaler.get_scale(),
            )
        self._sample += 1

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
        if self._eval_hook is not None:
            self._eval_hook.remove()
            self._eval_hook = None
        if self._placeholder is not None:
            for group in self._optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p is not self._placeholder]
            self._optimizer.state.pop(self._placeholder, None)
            self._optimizer = self._placeholder = self._overflow_marker = None
        if self.collector is not None:
            self.collector.__exit__(None, None, None)
            self.accumulation = self.collector.state
            logger.info(
                "GBLMGradientCallback: %d per-sample gradients folded, %d skipped after fp16 overflow",
                self.accumulation.nsamples,
                self.skipped,
            )
            self.collector = None
