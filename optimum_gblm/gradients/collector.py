"""Per-sample gradient folding: each targeted weight's gradient is folded into fp32 accumulators as it arrives.

Each gradient is folded into `l1 = sum_n |c g_n|` and / or `l2sq = sum_n (c g_n)^2` from a
`register_post_accumulate_grad_hook` and freed at once, so no full gradient copy is kept (the reference keeps
every `.grad` and copies it to the CPU per sample).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..targets import PruneTarget, target_weight
from .accumulation import NORMS, GradientAccumulation, NonFiniteGradientError

logger = logging.getLogger(__name__)


class GradientCollector:
    """Context manager that makes the targeted linear weights the only trainable tensors and folds their
    per-sample gradients into fp32 accumulators.

    On exit the model's `requires_grad` flags, train/eval mode and `.grad` fields are restored, also on errors.
    Call `end_sample()` after each per-sample backward: it checks for non-finite values and counts the sample.

    `loss_scaler`: an AMP grad scaler (`get_scale()`, `is_enabled()`, e.g. accelerate's `GradScaler`) that scaled
    each loss before its backward outside the collector's control (a Trainer); gradients are divided by its scale.
    `overflow_marker`: with `defer_fold`, a tensor filled with inf as soon as a gradient of the current sample is
    non-finite, so that a grad scaler inspecting it sees the overflow of the gradients the collector has freed.
    """

    def __init__(
        self,
        model: nn.Module,
        targets: dict[str, nn.Module | PruneTarget],
        norms: Iterable[str] = ("l1",),
        scale: float = 100.0,
        accumulate_device: torch.device | str | None = None,
        train_mode: bool = False,
        defer_fold: bool = False,
        state: GradientAccumulation | None = None,
        loss_scaler: Any | None = None,
        overflow_marker: torch.Tensor | None = None,
    ) -> None:
        norms = tuple(norms)
        if not norms or any(n not in NORMS for n in norms):
            raise ValueError(f"norms={norms!r} is invalid: choose from {NORMS}")
        if not targets:
            raise ValueError("no target modules to collect gradients for")
        self.model = model
        self.targets = targets
        self.norms = norms
        self.train_mode = train_mode
        self.accumulate_device = accumulate_device
        # fp16 with loss scaling folds only once the whole backward is known to be finite.
        self.defer_fold = defer_fold
        # fp16 dynamic loss scale of `per_sample_backward`: None until its first sample, since any float,
        # 1.0 included, is a scale it can legitimately reach.
        self.loss_scale: float | None = None
        self.loss_scaler = loss_scaler
        self.overflow_marker = overflow_marker
        self.state = state or GradientAccumulation(scale=scale)
        self._sample_scaler_scale: float | None = None  # the scaler's scale, read once per sample
        self._pending: dict[str, torch.Tensor] = {}
        self._finite_checks: list[tuple[str, torch.Tensor]] = []
        self._handles: list[Any] = []
        self._saved_flags: dict[str, bool] = {}
        self._saved_training = model.training

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def __enter__(self) -> GradientCollector:
        self._saved_flags = {name: p.requires_grad for name, p in self.model.named_parameters()}
        self._saved_training = self.model.training
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None
        # One hook per parameter; a 3-D parameter (stacked experts) folds each targeted slice under its own name.
        by_param: dict[int, tuple[nn.Parameter, list[tuple[str, int | None]]]] = {}
        for name, target in self.targets.items():
            param = target.parameter if isinstance(target, PruneTarget) else target.weight
            index = target.index if isinstance(target, PruneTarget) else None
            by_param.setdefault(id(param), (param, []))[1].append((name, index))
            shape = target_weight(target).shape
            device = self.accumulate_device or param.device
            for norm, store in (("l1", self.state.l1), ("l2", self.state.l2sq)):
                if norm in self.norms and name not in store:
                    store[name] = torch.zeros(shape, dtype=torch.float32, device=device)
        for param, slices in by_param.values():
            param.requires_grad_(True)
            self._handles.append(param.register_post_accumulate_grad_hook(lambda p, s=slices: self._on_grad(s, p)))
        self.model.train(self.train_mode)
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending.clear()
        self._finite_checks.clear()
        for name, p in self.model.named_parameters():
            p.grad = None
            p.requires_grad_(self._saved_flags.get(name, p.requires_grad))
        self.model.train(self._saved_training)

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _on_grad(self, slices: list[tuple[str, int | None]], param: torch.Tensor) -> None:
        full = param.grad
        param.grad = None  # free it now: the hook is the only consumer
        if full is None:
            return
        self._scaler_scale()  # read while this sample's backward runs, before the scaler can update its scale
        for name, index in slices:
            grad = full if index is None else full[index]
            if self.defer_fold:
                self._pending[name] = grad
                if self.overflow_marker is not None:
                    finite = torch.isfinite(grad).all().to(self.overflow_marker.device)
                    self.overflow_marker.masked_fill_(~finite, float("inf"))
            else:
                self._fold(name, grad)

    def _scaler_scale(self) -> float:
        """The external scaler's loss scale for the current sample, read once per sample (a CUDA read syncs)."""
        if self.loss_scaler is None:
            return 1.0
        if self._sample_scaler_scale is None:
            enabled = self.loss_scaler.is_enabled()
            self._sample_scaler_scale = float(self.loss_scaler.get_scale()) if enabled else 1.0
        return self._sample_scaler_scale

    def _fold(self, name: str, grad: torch.Tensor) -> None:
        g = grad.to(dtype=torch.float32)
        loss_scale = 1.0 if self.loss_scale is None else self.loss_scale
        factor = self.state.scale / (loss_scale * self._scaler_scale())
        g = g * factor
        self._finite_checks.append((name, torch.isfinite(g).all()))
        if "l1" in self.norms:
            self.state.l1[name].add_(g.abs().to(self.state.l1[name].device))
        if "l2" in self.norms:
            self.state.l2sq[name].add_((g * g).to(self.state.l2sq[name].device))

    def end_sample(self, sample_index: int) -> bool:
        """Finish one per-sample backward. Returns False when a deferred (fp16) sample overflowed and must be
        retried with a smaller loss scale; raises `NonFiniteGradientError` naming module and sample otherwise."""
        try:
            return self._end_sample(sample_index)
        finally:
            self._sample_scaler_scale = None

    @property
    def sample_started(self) -> bool:
        """Whether a gradient of the current sample has arrived since the last `end_sample()`."""
        return bool(self._pending or self._finite_checks)

    def _end_sample(self, sample_index: int) -> bool:
        if self.defer_fold:
            finite = all(bool(torch.isfinite(g).all()) for g in self._pending.values())
            if not finite:
                self._pending.clear()
                return False
            for name, grad in self._pending.items():
                self._fold(name, grad)
            self._pending.clear()
        if self._finite_checks:
            flags = torch.stack([flag.to("cpu") for _, flag in self._finite_checks])
            if not bool(flags.all()):
                bad = self._finite_checks[int((~flags).nonzero()[0])][0]
                self._finite_checks.clear()
                raise NonFiniteGradientError(
                    f"non-finite (NaN or inf) gradient in module {bad!r} at calibration sample {sample_index}"
                )
        self._finite_checks.clear()
        self.state.nsamples += 1
        return True


def per_sample_backward(
    collector: GradientCollector,
    loss_fn: Callable[[], torch.Tensor],
    sample_index: int,
    fp16_scaling: bool = False,
    max_retries: int = 24,
) -> float:
    """One sample's forward + backward through `loss_fn`, with dynamic loss scaling for fp16. Returns the loss."""
    if fp16_scaling and collector.loss_scale is None:
        collector.loss_scale = 2.0**16
    for _ in range(max_retries):
        loss = loss_fn()
        if loss is None or not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(
                "the calibration step returned no scalar loss: batches need 'labels' (or use a model/adapter that "
                "computes its own loss)"
            )
        if not torch.isfinite(loss.detach()):
            raise NonFiniteGradientError(f"non-finite loss {float(loss):g} at calibration sample {sample_index}")
        (loss * collector.loss_scale if fp16_scaling else loss).backward()
        if collector.end_sample(sample_index):
            return float(loss.detach())
        collector.loss_scale /= 2.0
        logger.debug("fp16 overflow at sample %d: loss scale lowered to %g", sample_index, collector.loss_scale)
    raise NonFiniteGradientError(f"fp16 gradients kept overflowing at calibration sample {sample_index}")
