"""Per-sample gradient folding: each targeted weight's gradient is folded into fp32 accumulators as it arrives.

Each gradient is folded into `l1 = sum_n |c g_n|` and / or `l2sq = sum_n (c g_n)^2` from a
`register_post_accumulate_grad_hook` and freed at once, so no full gradient copy is kept (the reference keeps
every `.grad` and copies it to the CPU per sample). The fold works in place on the gradient it owns (no temporary
tensor) and the finite check runs on the accumulators once every `finite_check_every` samples (a NaN or inf
gradient stays non-finite in them), so a sample costs no extra pass per weight and no host synchronisation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..targets import PruneTarget, target_weight
from ..utils import model_state
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
    `finite_check_every`: the losses and accumulators are checked for NaN / inf after this many samples and on exit
    (1 names the exact sample of a non-finite gradient; larger values name the range of samples since the last check).
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
        finite_check_every: int = 16,
    ) -> None:
        norms = tuple(norms)
        if finite_check_every < 1:
            raise ValueError(f"finite_check_every={finite_check_every} is invalid: it must be a positive integer")
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
        self.finite_check_every = finite_check_every
        self._pending: dict[str, torch.Tensor] = {}
        self._started = False  # a gradient of the current sample has arrived
        self._losses: list[tuple[int, torch.Tensor]] = []  # (sample, detached loss) since the last check
        self._unchecked: list[int] = []  # samples folded since the last check of the accumulators
        self._handles: list[Any] = []
        self._state = contextlib.ExitStack()  # the model's flags, mode and grads while the collector is active

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def __enter__(self) -> GradientCollector:
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
        trainable = [param for param, _ in by_param.values()]
        self._state.enter_context(model_state(self.model, trainable, train=self.train_mode, clear_grads=True))
        for param, slices in by_param.values():  # a hook needs its tensor to require grad
            self._handles.append(param.register_post_accumulate_grad_hook(lambda p, s=slices: self._on_grad(s, p)))
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending.clear()
        self._state.close()
        if exc_type is None:
            self.check_finite()  # the samples since the last check, before the accumulation is used
        self._losses.clear()
        self._unchecked.clear()

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _on_grad(self, slices: list[tuple[str, int | None]], param: torch.Tensor) -> None:
        full = param.grad
        param.grad = None  # free it now: the hook is the only consumer
        if full is None:
            return
        self._started = True
        self._scaler_scale()  # read while this sample's backward runs, before the scaler can update its scale
        # The hook owns the freed gradient, so the fold may work in place on it, unless two names share one view.
        indices = [index for _, index in slices]
        owned = len(slices) == 1 or (None not in indices and len(set(indices)) == len(indices))
        for name, index in slices:
            grad = full if index is None else full[index]
            if self.defer_fold:
                self._pending[name] = grad
                if self.overflow_marker is not None:
                    finite = torch.isfinite(grad).all().to(self.overflow_marker.device)
                    self.overflow_marker.masked_fill_(~finite, float("inf"))
            else:
                self._fold(name, grad, owned)

    def _scaler_scale(self) -> float:
        """The external scaler's loss scale for the current sample, read once per sample (a CUDA read syncs)."""
        if self.loss_scaler is None:
            return 1.0
        if self._sample_scaler_scale is None:
            enabled = self.loss_scaler.is_enabled()
            self._sample_scaler_scale = float(self.loss_scaler.get_scale()) if enabled else 1.0
        return self._sample_scaler_scale

    def _fold(self, name: str, grad: torch.Tensor, owned: bool = False) -> None:
        """l1 += |c g|, l2sq += (c g)^2, each value rounded as the unfused `g * c`, `.abs()`, `g * g` would
        (|x| * |x| == x * x exactly), but in place on a gradient nobody else reads: no temporaries."""
        g = grad.to(dtype=torch.float32)
        loss_scale = 1.0 if self.loss_scale is None else self.loss_scale
        factor = self.state.scale / (loss_scale * self._scaler_scale())
        g = g.mul_(factor) if owned or g is not grad else g * factor
        g = g.abs_()
        if "l1" in self.norms:
            self.state.l1[name].add_(g.to(self.state.l1[name].device))
        if "l2" in self.norms:
            self.state.l2sq[name].add_(g.mul_(g).to(self.state.l2sq[name].device))

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
        return self._started

    def record_loss(self, loss: torch.Tensor, sample_index: int) -> None:
        """Keep a sample's loss for the next finite check (no host synchronisation now)."""
        self._losses.append((sample_index, loss.detach()))

    def _end_sample(self, sample_index: int) -> bool:
        self._started = False
        if self.defer_fold:
            if self._pending:  # fp16 loss scaling must know now whether to retry: one synchronisation per sample
                flags = [torch.isfinite(g).all() for g in self._pending.values()]
                if not bool(torch.stack([f.to(flags[0].device) for f in flags]).all()):
                    self._pending.clear()
                    return False
            for name, grad in self._pending.items():
                self._fold(name, grad, owned=True)
            self._pending.clear()
        self.state.nsamples += 1
        self._unchecked.append(sample_index)
        if len(self._unchecked) >= self.finite_check_every:
            self.check_finite()
        return True

    def check_finite(self) -> None:
        """Raise `NonFiniteGradientError` if a loss, or the accumulation of a module, is NaN or inf: a non-finite
        gradient stays non-finite in the sums, so checking them every few samples catches every one."""
        losses, samples = self._losses, self._unchecked
        self._losses, self._unchecked = [], []
        check_losses(losses)
        if not samples:
            return
        stores = [(name, acc) for store in (self.state.l1, self.state.l2sq) for name, acc in store.items()]
        flags = [torch.isfinite(acc).all() for _, acc in stores]
        flags = torch.stack([f.to(flags[0].device) for f in flags]).cpu()  # one synchronisation per check
        if not bool(flags.all()):
            bad_name = stores[int((~flags).nonzero()[0])][0]
            where = f"sample {samples[0]}" if len(samples) == 1 else f"samples {samples[0]}..{samples[-1]}"
            raise NonFiniteGradientError(
                f"non-finite (NaN or inf) gradient in module {bad_name!r} at calibration {where} (or their sum "
                f"overflowed; the accumulators are checked every {self.finite_check_every} samples)"
            )


def check_losses(losses: list[tuple[int, torch.Tensor]]) -> None:
    """Raise `NonFiniteGradientError` naming the first (sample, loss) pair whose loss is NaN or inf; one host
    synchronisation for all of them."""
    if not losses:
        return
    values = torch.stack([loss.float().reshape(()).cpu() for _, loss in losses])
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        index = int(bad[0])
        raise NonFiniteGradientError(
            f"non-finite loss {float(values[index]):g} at calibration sample {losses[index][0]}"
        )


def per_sample_backward(
    collector: GradientCollector,
    loss_fn: Callable[[], torch.Tensor],
    sample_index: int,
    fp16_scaling: bool = False,
    max_retries: int = 24,
) -> torch.Tensor:
    """One sample's forward + backward through `loss_fn`, with dynamic loss scaling for fp16. Returns the detached
    loss tensor (reading it as a float would synchronise a GPU once per sample)."""
    if fp16_scaling and collector.loss_scale is None:
        collector.loss_scale = 2.0**16
    for _ in range(max_retries):
        loss = loss_fn()
        if loss is None or not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(
                "the calibration step returned no scalar loss: batches need 'labels' (or use a model/adapter that "
                "computes its own loss)"
            )
        if fp16_scaling and not torch.isfinite(loss.detach()):  # loss scaling synchronises per sample anyway
            raise NonFiniteGradientError(f"non-finite loss {float(loss):g} at calibration sample {sample_index}")
        if not fp16_scaling:
            collector.record_loss(loss, sample_index)  # checked with the accumulators, first
        (loss * collector.loss_scale if fp16_scaling else loss).backward()
        if collector.end_sample(sample_index):
            return loss.detach()
        collector.loss_scale /= 2.0
        logger.debug("fp16 overflow at sample %d: loss scale lowered to %g", sample_index, collector.loss_scale)
    raise NonFiniteGradientError(f"fp16 gradients kept overflowing at calibration sample {sample_index}")
