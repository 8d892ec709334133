"""The block-wise gradient pass: the same per-sample sums, with one block's accumulators in memory at a time.

The one-pass collection folds every sample's gradients into the sums of every target at once, so all of them are
held for the whole pass: 4 bytes per targeted weight and per norm (0.8 GiB for gblm-obs on SmolLM2-135M, about
50 GB on a 7B model), more than the model itself in bf16. Backpropagation runs block by block anyway, so this pass
reorders it:

1. forward: each block runs over every sample in turn (batch of one, the targets requiring grad, as in the one-pass
   forward) and its inputs are written to disk; the last block's outputs too;
2. head: per sample, the caller's own loss runs with every block's forward replaced (each passes its input through,
   the last returns the stored last hidden state as a leaf), so the leaf's gradient is dL/d(last hidden state),
   whatever the model's head;
3. backward, from the last block to the first: per sample, the block is re-run on its stored input and the stored
   output gradient is propagated through it; the collector folds the block's weight gradients (samples in the same
   order as one pass, so the same sums), and the input's gradient is the previous block's output gradient;
4. each finished block's sums are written to a safetensors file, and the accumulation reads a module's sums back
   when they are used (the allocation and the pruning of that block).

The price is a second forward of every block (as with gradient checkpointing) and the disk traffic of the block
inputs and the sums. The memory is one block's sums, one sample's activations of one block, and the model.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ..blocks import call_block, run_block
from ..configuration import GBLMConfig
from ..fields import OptionError
from ..pipelines.placement import IntermediatesStore
from ..pipelines.sequential import as_output, capture_block_inputs
from ..targets import PruneTarget
from ..utils import forwards_replaced, model_state
from .accumulation import GradientAccumulation
from .collector import GradientCollector, check_losses

logger = logging.getLogger(__name__)


class DiskSums(Mapping[str, torch.Tensor]):
    """Accumulated sums kept in safetensors files (one per block), read back one module at a time. The folder is
    removed when the mapping is garbage-collected."""

    def __init__(self, prefix: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self._files: dict[str, Path] = {}
        self._devices: dict[str, str] = {}  # where each module's sums were accumulated, as in one pass
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, True)

    def write(self, block: int, sums: Mapping[str, torch.Tensor]) -> None:
        path = self.folder / f"block{block}.safetensors"
        save_file({name: t.detach().cpu().contiguous() for name, t in sums.items()}, str(path))
        self._files.update(dict.fromkeys(sums, path))
        self._devices.update({name: str(t.device) for name, t in sums.items()})

    def order(self, names: Sequence[str]) -> None:
        """Iterate in `names`' order (the one-pass order), not in the order the blocks were written."""
        self._files = {name: self._files[name] for name in names if name in self._files}

    def __getitem__(self, name: str) -> torch.Tensor:
        with safe_open(str(self._files[name]), framework="pt", device=self._devices[name]) as handle:
            return handle.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def _parameter(target: nn.Module | PruneTarget) -> nn.Parameter:
    return target.parameter if isinstance(target, PruneTarget) else target.weight


def targets_by_block(blocks: Sequence[nn.Module], targets: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The targets of each block, in the targets' order; raises when a target lies outside every block."""
    owner = {id(p): index for index, block in enumerate(blocks) for p in block.parameters()}
    grouped: list[dict[str, Any]] = [{} for _ in blocks]
    outside = []
    for name, target in targets.items():
        index = owner.get(id(_parameter(target)))
        if index is None:
            outside.append(name)
        else:
            grouped[index][name] = target
    if outside:
        raise OptionError(
            "blockwise_gradients",
            "{flag} needs every target inside the model's blocks; {outside} are not: collect without {name}",
            outside=outside[:3],
        )
    return grouped


def check_blockwise(model: nn.Module, **options: Any) -> None:
    """Refuse the options the block-wise pass cannot honour, before any work."""
    unsupported = [name.replace("_", " ") for name, value in options.items() if value]
    if unsupported:
        raise OptionError(
            "blockwise_gradients",
            "{flag} cannot be combined with {unsupported}: the block-wise pass keeps its sums on disk block by "
            "block, runs in one process, re-runs every block (dropout would draw other masks) and already keeps one "
            "block's activations; leave those options out, or collect without {name}",
            unsupported=", ".join(unsupported),
        )
    config = getattr(model, "config", None)
    configs = [config, *(getattr(config, key, None) for key in ("text_config", "language_config"))]
    if any(getattr(c, "output_router_logits", False) for c in configs if c is not None):
        raise OptionError(
            "blockwise_gradients",
            "{flag} needs a loss computed from the last hidden state only; this model adds a router loss from every "
            "layer (config.output_router_logits): collect without {name}",
        )


def blockwise_collection(
    model: nn.Module,
    targets: Mapping[str, Any],
    samples: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    config: GBLMConfig,
    norms: tuple[str, ...],
    autocast: Callable[[], contextlib.AbstractContextManager],
    *,
    cache: bool,
    gradient_checkpointing: bool,
    distributed: bool,
    offload_accumulators: bool,
    train_mode: bool,
    progress: bool,
) -> GradientAccumulation:
    """`run_collection` with `config.blockwise_gradients`: refuse what the block-wise pass cannot do, then run it."""
    from ..adapters import get_adapter

    check_blockwise(
        model,
        a_gradient_cache=cache,
        gradient_checkpointing=gradient_checkpointing,
        several_processes=distributed,
        train_mode=train_mode,
    )
    return run_blockwise(
        model, get_adapter(model), targets, samples, loss_fn, config, norms, autocast,
        accumulate_device="cpu" if offload_accumulators else None, progress=progress,
    )  # fmt: skip


def run_blockwise(
    model: nn.Module,
    adapter: Any,
    targets: Mapping[str, Any],
    samples: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    config: GBLMConfig,
    norms: tuple[str, ...],
    autocast: Callable[[], contextlib.AbstractContextManager],
    accumulate_device: str | None = None,
    progress: bool = True,
) -> GradientAccumulation:
    """The block-wise pass (module docstring), in eval mode; returns an accumulation whose sums are read from disk."""
    samples = list(samples)
    if not samples:
        raise ValueError("the calibration data yielded no samples: the dataloader is empty")
    if not targets:
        raise ValueError("no target modules to collect gradients for")
    blocks = adapter.blocks(model)
    grouped = targets_by_block(list(blocks), targets)
    first = next(i for i, group in enumerate(grouped) if group)
    n, depth = len(samples), len(blocks)
    sums = {norm: DiskSums(f"optimum-gblm-{norm}-sums-") for norm in norms}
    start = time.perf_counter()
    with (
        tqdm(total=2 * depth + 1, desc="gradients (block-wise)", unit="step", disable=not progress) as bar,
        model_state(model, trainable=(), train=False),  # the collectors turn their block's targets on
        IntermediatesStore("disk") as inputs,
        IntermediatesStore("disk") as grads,
    ):
        with torch.no_grad(), autocast():
            kwargs = capture_block_inputs(model, adapter, samples, inputs, run=lambda s: loss_fn(model, s))
        form = _forward_blocks(blocks, grouped, first, kwargs, inputs, autocast, n, bar)
        _head(blocks, samples, lambda s: loss_fn(model, s), inputs, grads, autocast, form, depth * n, bar)
        for index in range(depth - 1, first - 1, -1):
            block_sums = _backward_block(
                model, blocks[index], grouped[index], kwargs[index], inputs, grads, index, index > first, config, norms,
                autocast, accumulate_device,
            )  # fmt: skip
            for norm, store in sums.items():
                if block_sums is not None:
                    store.write(index, block_sums[norm])
            del block_sums  # one block's sums alive at a time: the next collector allocates its own
            bar.update(1)
        bar.update(first)
    for store in sums.values():
        store.order(list(targets))
    logger.info("Gradients (block-wise): %d samples, %d blocks in %.1f s", n, depth, time.perf_counter() - start)
    return GradientAccumulation(
        scale=config.gradient_scale, nsamples=n, l1=sums.get("l1", {}), l2sq=sums.get("l2", {})
    )


def _forward_blocks(
    blocks: Sequence[nn.Module],
    grouped: list[dict[str, Any]],
    first: int,
    kwargs: list[list[dict[str, Any]]],
    inputs: IntermediatesStore,
    autocast: Callable[[], contextlib.AbstractContextManager],
    n: int,
    bar: Any,
) -> int | None:
    """Run every block over every sample, storing its outputs as the next block's inputs (index block * n + sample).
    Grad mode mirrors the one-pass forward (the block's targets, and its input after the first target block, require
    grad), so the stored states are the values that pass computes. Returns the form of the blocks' outputs."""
    form: int | None = None
    for index, block in enumerate(blocks):
        with model_state(block, trainable=[_parameter(t) for t in grouped[index].values()]):
            for s in range(n):
                x = inputs.get(index * n + s).requires_grad_(index > first)  # a target before it: as in backward
                with autocast():
                    raw = call_block(block, x, kwargs[index][s])
                form = len(raw) if isinstance(raw, (tuple, list)) else None
                out = raw if form is None else raw[0]
                inputs.put((index + 1) * n + s, out.detach())
        bar.update(1)
    return form


def _head(
    blocks: Sequence[nn.Module],
    samples: Sequence[Any],
    loss: Callable[[Any], torch.Tensor],
    inputs: IntermediatesStore,
    grads: IntermediatesStore,
    autocast: Callable[[], contextlib.AbstractContextManager],
    form: int | None,
    offset: int,
    bar: Any,
) -> None:
    """Per sample, the loss from the stored last hidden state; stores its gradient (the last block's output grad).
    The model's own forward runs with every block passing its input through and the last returning the stored
    state as a leaf, so the stem, the masks and the head are the model's own."""
    device = next(blocks[len(blocks) - 1].parameters()).device
    leaf: list[torch.Tensor] = []

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        return as_output(args[0] if args else kwargs["hidden_states"], form)

    forwards = [passthrough] * (len(blocks) - 1) + [lambda *args, **kwargs: as_output(leaf[0], form)]
    losses = []
    with forwards_replaced(blocks, forwards):
        for s, sample in enumerate(samples):
            leaf[:] = [inputs.get(offset + s).to(device).requires_grad_(True)]  # a leaf where the head is
            with autocast():
                value = loss(sample)
            if value is None or not isinstance(value, torch.Tensor) or value.dim() != 0:
                raise ValueError("the calibration step returned no scalar loss: batches need 'labels'")
            losses.append((s, value.detach()))
            if value.requires_grad:
                value.backward()
            if leaf[0].grad is None:
                raise ValueError(
                    "the calibration step's loss does not depend on the last block's output, which the block-wise "
                    "pass needs: collect without blockwise_gradients"
                )
            grads.put(s, leaf[0].grad)
    check_losses(losses)
    bar.update(1)


def _backward_block(
    model: nn.Module,
    block: nn.Module,
    targets: dict[str, Any],
    kwargs: list[dict[str, Any]],
    inputs: IntermediatesStore,
    grads: IntermediatesStore,
    index: int,
    input_grad: bool,
    config: GBLMConfig,
    norms: tuple[str, ...],
    autocast: Callable[[], contextlib.AbstractContextManager],
    accumulate_device: str | None,
) -> dict[str, Mapping[str, torch.Tensor]] | None:
    """Re-run one block per sample and propagate the stored output gradient; fold its targets' weight gradients.
    Returns the block's sums by norm (None for a block without targets)."""
    n = len(kwargs)
    collector = (
        GradientCollector(
            model,
            targets,
            norms=norms,
            scale=config.gradient_scale,
            accumulate_device=accumulate_device,
            finite_check_every=n,
        )  # fmt: skip
        if targets
        else contextlib.nullcontext()
    )
    with collector:
        for s in range(n):
            x = inputs.get(index * n + s).requires_grad_(input_grad)
            with autocast():
                out = run_block(block, x, kwargs[s])
            torch.autograd.backward(out, grads.get(s).to(out.device))
            if targets:
                collector.end_sample(s)
            if input_grad:
                grads.put(s, x.grad)
    if not targets:
        return None
    state = collector.state
    return {"l1": state.l1, "l2": state.l2sq}
