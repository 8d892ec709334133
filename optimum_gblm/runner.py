"""The layer-by-layer pass (ALGORITHMS.md section 7): capture block-0 inputs, then per block collect
statistics, prune its targeted linears and re-run the pruned block to feed the next one."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import ModelAdapter
from .configuration import GBLMConfig
from .methods import LayerJob, get_method
from .report import SparsityReport
from .statistics import LayerStatistics
from .utils import inference_mode, move_to

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the capture hook to end the forward pass once block 0's inputs are recorded."""


def capture_block_inputs(
    model: nn.Module, adapter: ModelAdapter, samples: Sequence[Any], offload: bool = False
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Hidden states and every keyword argument entering block 0, per sample, from the model's own stem."""
    hidden: list[torch.Tensor] = []
    kwargs_list: list[dict[str, Any]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        states = args[0] if args else kwargs.pop("hidden_states")
        hidden.append(states.detach().cpu() if offload else states.detach())
        kwargs_list.append({**kwargs, **({"__args__": args[1:]} if len(args) > 1 else {})})
        raise _StopForward

    handle = adapter.blocks(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for sample in samples:
            with contextlib.suppress(_StopForward):
                adapter.forward(model, sample)
    finally:
        handle.remove()
    if len(hidden) != len(samples):
        raise RuntimeError(f"captured inputs for {len(hidden)} of {len(samples)} samples: does block 0 run?")
    return hidden, kwargs_list


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and (a is b or torch.equal(a, b.to(a.device)))
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or (type(a) in (int, float, bool, str, type(None)) and a == b)


def batch_groups(inputs: list[torch.Tensor], kwargs: list[dict[str, Any]], batch_size: int) -> list[list[int]]:
    """Consecutive samples that can share one block forward: same input shape, identical keyword arguments
    (equal-length windows share their rotary embeddings and mask), at most `batch_size` per group."""
    groups: list[list[int]] = []
    for i, (states, kw) in enumerate(zip(inputs, kwargs)):
        head = groups[-1][0] if groups else None
        if (
            head is not None
            and len(groups[-1]) < batch_size
            and states.shape == inputs[head].shape
            and states.shape[0] == 1
            and _same(kw, kwargs[head])
        ):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _run_block(block: nn.Module, states: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    device = next(block.parameters()).device
    kwargs = move_to(dict(kwargs), device)
    extra = kwargs.pop("__args__", ())
    out = block(states.to(device), *extra, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def prune_layerwise(
    model: nn.Module,
    adapter: ModelAdapter,
    config: GBLMConfig,
    samples: Sequence[Any],
    gradients: dict[str, torch.Tensor] | None = None,
    sparsities: dict[str, float] | None = None,
    progress: bool = True,
) -> SparsityReport:
    """Prune every targeted linear of `model` in place with `config.method`; return the sparsity report."""
    method = get_method(config.method)
    report = SparsityReport(pattern=config.pattern)
    blocks = adapter.blocks(model)
    sparsities = sparsities or {}

    def prune_linears(linears: dict[str, nn.Linear], stats: dict[str, LayerStatistics]) -> None:
        for name, linear in linears.items():
            target = sparsities.get(name, config.sparsity)
            job = LayerJob(
                name=name,
                weight=linear.weight,
                sparsity=target,
                config=config,
                stats=stats.get(name),
                gradient=None if gradients is None else gradients.get(name),
            )
            if method.needs_gradients and job.gradient is None:
                raise RuntimeError(f"{name}: method {config.method!r} needs gradients, none were collected for it")
            method.prune(job)
            report.add(name, linear.weight.detach(), target)
            if name in stats:
                stats[name].free()

    with inference_mode(model):
        if method.statistic is None:
            # magnitude / gradient: the score needs no forward pass.
            for index, block in enumerate(tqdm(blocks, desc=f"{config.method}: blocks", disable=not progress)):
                prune_linears(
                    adapter.block_targets(block, f"{adapter.block_path}.{index}", config.targets, config.ignore), {}
                )
            return report

        inputs, kwargs = capture_block_inputs(model, adapter, samples, config.offload_activations)
        groups = batch_groups(inputs, kwargs, config.batch_size)
        logger.debug("%d samples in %d block batches", len(inputs), len(groups))
        for index, block in enumerate(tqdm(blocks, desc=f"{config.method}: blocks", disable=not progress)):
            linears = adapter.block_targets(block, f"{adapter.block_path}.{index}", config.targets, config.ignore)
            device = next(block.parameters()).device
            stats = {
                name: LayerStatistics(linear.in_features, method.statistic, device) for name, linear in linears.items()
            }
            handles = [
                linear.register_forward_hook(lambda mod, inp, out, st=stats[name]: st.add_batch(inp[0]))
                for name, linear in linears.items()
            ]
            try:
                for group in groups:
                    _run_block(block, torch.cat([inputs[j] for j in group]), kwargs[group[0]])
            finally:
                for handle in handles:
                    handle.remove()
            prune_linears(linears, stats)
            # Re-run the pruned block: its outputs are the next block's inputs.
            for group in groups:
                out = _run_block(block, torch.cat([inputs[j] for j in group]), kwargs[group[0]])
                out = out.cpu() if config.offload_activations else out
                for k, j in enumerate(group):
                    inputs[j] = out[k : k + 1]
            logger.debug("block %d pruned (%d linears)", index, len(linears))
    return report
