"""The trainable subsets of a recovery run, and merging them back so that every pruned weight stays exactly zero.

The low-rank updates are `torch.nn.utils.parametrize` parametrizations of the pruned weights, so the function the
Trainer optimises is exactly the function that is merged: MaskLoRA computes `W + s * (B @ A) * keep` (the update
only reaches kept weights), ScaleLoRA `W * (1 + s * B @ A)` (zeros stay zero by construction). peft's LoRA layers
add `x @ A.T @ B.T` beside the frozen weight, which cannot be masked: masking only at merge would change the trained
function, so peft is not used here.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..targets import PruneTarget
from ..utils import requires_grad_flags, restore_requires_grad
from .config import RecoveryConfig

logger = logging.getLogger(__name__)


class _LowRank(nn.Module):
    """A rank-r product `B @ A` scaled by alpha / r; B starts at zero, so training starts from the pruned model."""

    def __init__(self, shape: tuple[int, int], rank: int, alpha: float, keep: torch.Tensor | None, seed: int) -> None:
        super().__init__()
        rows, cols = shape
        generator = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(cols)  # kaiming-uniform(a=sqrt(5)) bound, as nn.Linear and LoRA initialise A
        self.A = nn.Parameter((torch.rand(rank, cols, generator=generator) * 2 - 1) * bound)
        self.B = nn.Parameter(torch.zeros(rows, rank))
        self.scale = alpha / rank
        self.register_buffer("keep", keep, persistent=False)

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return (self.B @ self.A * self.scale).to(weight.dtype)


class MaskLoRA(_LowRank):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta(weight) * self.keep  # bool keep: 1 byte per weight saved for backward


class ScaleLoRA(_LowRank):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (1 + self.delta(weight))


LORA_CLASSES = {"masklora": MaskLoRA, "scalelora": ScaleLoRA}


@dataclass
class TrainableSubset:
    """What was made trainable: names by kind, LoRA'd modules with their masks, and directly trained pruned weights
    (their masks are re-applied after every optimizer step)."""

    names: dict[str, list[str]] = field(default_factory=dict)
    lora_modules: dict[str, tuple[nn.Module, torch.Tensor]] = field(default_factory=dict)
    masked_params: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)
    tied_head: bool = False
    trainable: int = 0
    total: int = 0
    requires_grad: dict[str, bool] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {
            "parameters": {kind: len(names) for kind, names in self.names.items()},
            "trainable_params": self.trainable,
            "total_params": self.total,
            "trainable_share": self.trainable / self.total if self.total else 0.0,
            "tied_head": self.tied_head,
        }


def lora_targets(targets: list[PruneTarget], cfg: RecoveryConfig) -> list[PruneTarget]:
    """Whole-weight targets that get a low-rank update, checked before training: the rank must fit the layer."""
    chosen = [t for t in targets if t.index is None and isinstance(t.module, nn.Linear)]
    if cfg.lora_targets:
        patterns = [re.compile(p) for p in cfg.lora_targets]
        chosen = [t for t in chosen if any(p.search(t.name) for p in patterns)]
    if not chosen:
        raise ValueError(f"lora_targets={cfg.lora_targets!r} matches no prunable linear layer of this model")
    too_small = [f"{t.name} {t.shape}" for t in chosen if cfg.lora_rank > min(t.shape)]
    if too_small:
        raise ValueError(
            f"lora_rank={cfg.lora_rank} is larger than the layer: {', '.join(too_small[:3])}; the rank must be at "
            f"most min(out, in) = {min(min(t.shape) for t in chosen)}"
        )
    return chosen


def make_trainable(
    model: nn.Module, cfg: RecoveryConfig, targets: list[PruneTarget], masks: dict[str, torch.Tensor]
) -> TrainableSubset:
    """Freeze everything, then unfreeze the configured subset (adding LoRA parametrizations where asked)."""
    subset = TrainableSubset(requires_grad=requires_grad_flags(model))  # put back by merge, after the Trainer run
    subset.total = sum(p.numel() for p in model.parameters())
    model.requires_grad_(False)
    chosen: dict[str, nn.Parameter] = {}
    if "norm" in cfg.subset:
        for name, module in model.named_modules():
            if "norm" in type(module).__name__.lower():
                for pname, param in module.named_parameters(recurse=False):
                    chosen[f"{name}.{pname}"] = param
                    subset.names.setdefault("norm", []).append(f"{name}.{pname}")
    if "bias" in cfg.subset:
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                chosen[f"{name}.bias"] = module.bias
                subset.names.setdefault("bias", []).append(f"{name}.bias")
    if "head" in cfg.subset:
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError("subset 'head': this model has no output head (get_output_embeddings() is None)")
        embeddings = model.get_input_embeddings()
        subset.tied_head = embeddings is not None and head.weight is embeddings.weight
        for pname, param in head.named_parameters(recurse=False):
            chosen[f"head.{pname}"] = param
            subset.names.setdefault("head", []).append(f"head.{pname}")
    if not subset.names and not cfg.lora:
        raise ValueError(f"subset={cfg.subset} selects no parameter of this model (e.g. it has no biases)")
    by_param = {id(t.parameter): t.name for t in targets if t.index is None}
    for param in chosen.values():
        param.requires_grad_(True)
        if id(param) in by_param and by_param[id(param)] in masks:  # a pruned weight trained directly (a head)
            subset.masked_params.append((param, masks[by_param[id(param)]]))
    if cfg.lora:
        cls = LORA_CLASSES[cfg.lora]
        for i, target in enumerate(lora_targets(targets, cfg)):
            weight = target.module.weight
            keep = (
                ~masks[target.name].to(weight.device) if target.name in masks else torch.ones_like(weight, dtype=bool)
            )
            keep = keep.bool() if cls is MaskLoRA else None  # ScaleLoRA keeps zeros without a mask
            lora = cls(target.shape, cfg.lora_rank, cfg.lora_alpha, keep, cfg.seed * 100003 + i)
            parametrize.register_parametrization(target.module, "weight", lora.to(weight.device))
            subset.lora_modules[target.name] = (target.module, masks.get(target.name))
            subset.names.setdefault(cfg.lora, []).append(target.name)
    subset.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "Recovery trains %d of %d parameters (%.3f%%): %s",
        subset.trainable,
        subset.total,
        100 * subset.trainable / subset.total,
        ", ".join(f"{kind} x{len(names)}" for kind, names in subset.names.items()),
    )
    return subset


def apply_masks(subset: TrainableSubset) -> None:
    """Put the zeros back in directly trained pruned weights (after each optimizer step)."""
    with torch.no_grad():
        for param, mask in subset.masked_params:
            param.masked_fill_(mask.to(param.device), 0)


def merge(model: nn.Module, subset: TrainableSubset) -> None:
    """Fold the low-rank updates into the weights, put every pruned zero back (an exact +0.0) and restore the
    `requires_grad` flags the model had."""
    with torch.no_grad():
        for module, mask in subset.lora_modules.values():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            if mask is not None:
                module.weight.masked_fill_(mask.to(module.weight.device), 0)
        apply_masks(subset)
    restore_requires_grad(model, subset.requires_grad, missing=False)


def check_masks(model: nn.Module, targets: list[PruneTarget], masks: dict[str, torch.Tensor]) -> None:
    """Every pruned position is still exactly zero (a failure here is a bug, never a tolerance)."""
    for target in targets:
        if target.name in masks and target.index is None:
            lost = int((target.weight()[masks[target.name].to(target.weight().device)] != 0).sum())
            if lost:
                raise RuntimeError(f"recovery broke the sparsity of {target.name}: {lost} pruned weights are non-zero")
