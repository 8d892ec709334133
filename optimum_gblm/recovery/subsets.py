"""The built-in recovery subsets (norm, bias, head; masklora and scalelora, whose low-rank updates are in lora.py),
making a run's subsets trainable, and merging them back so that every pruned weight stays exactly zero."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..targets import PruneTarget
from ..utils import requires_grad_flags, restore_requires_grad
from .config import RecoveryConfig
from .lora import MaskLoRA, ScaleLoRA, attach_lora
from .registry import RecoverySubset, get_recovery_subset, list_recovery_subsets, register_recovery_subset

logger = logging.getLogger(__name__)


@register_recovery_subset
class NormSubset(RecoverySubset):
    name = "norm"
    help = "normalisation weights and biases"
    card_text = "normalisation weights and biases"

    def parameters(self, model: nn.Module, targets: list[PruneTarget]) -> dict[str, nn.Parameter]:
        return {
            f"{name}.{pname}": param
            for name, module in model.named_modules()
            if "norm" in type(module).__name__.lower()
            for pname, param in module.named_parameters(recurse=False)
        }


@register_recovery_subset
class BiasSubset(RecoverySubset):
    name = "bias"
    help = "linear biases"
    card_text = "linear biases"

    def parameters(self, model: nn.Module, targets: list[PruneTarget]) -> dict[str, nn.Parameter]:
        return {
            f"{name}.bias": module.bias
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module.bias is not None
        }


@register_recovery_subset
class HeadSubset(RecoverySubset):
    name = "head"
    help = "output head; tied to the input embeddings in SmolLM2, then both are trained as one matrix"
    card_text = "output head"
    recorded = {"tied_head": False}  # whether a tied head was trained: on every stage, as side-cars always had it

    def parameters(self, model: nn.Module, targets: list[PruneTarget]) -> dict[str, nn.Parameter]:
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError("subset 'head': this model has no output head (get_output_embeddings() is None)")
        return {f"head.{pname}": param for pname, param in head.named_parameters(recurse=False)}

    def settings(self, model: nn.Module) -> dict[str, Any]:
        head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
        return {"tied_head": embeddings is not None and head.weight is embeddings.weight}

    def card_note(self, settings: dict[str, Any]) -> str | None:
        if settings.get("tied_head"):
            return "the head is tied to the input embeddings: the shared matrix was trained"
        return None


@register_recovery_subset
class MaskLoRASubset(RecoverySubset):
    name = "masklora"
    help = "low-rank update masked to the kept weights"
    card_text = "MaskLoRA (low-rank update of the kept weights, merged)"
    parametrization = MaskLoRA


@register_recovery_subset
class ScaleLoRASubset(RecoverySubset):
    name = "scalelora"
    help = "multiplicative low-rank update: zeros stay zero"
    card_text = "ScaleLoRA (multiplicative low-rank update, merged)"
    parametrization = ScaleLoRA


@dataclass
class TrainableSubset:
    """What was made trainable: names by kind, LoRA'd modules with their masks, directly trained pruned weights
    (their masks are re-applied after every optimizer step) and the subsets' own recorded facts."""

    names: dict[str, list[str]] = field(default_factory=dict)
    lora_modules: dict[str, tuple[nn.Module, torch.Tensor]] = field(default_factory=dict)
    masked_params: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the subsets' recorded facts (RecoverySubset.recorded)
    trainable: int = 0
    total: int = 0
    requires_grad: dict[str, bool] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {
            "parameters": {kind: len(names) for kind, names in self.names.items()},
            "trainable_params": self.trainable,
            "total_params": self.total,
            "trainable_share": self.trainable / self.total if self.total else 0.0,
            **self.settings,
        }


def make_trainable(
    model: nn.Module, cfg: RecoveryConfig, targets: list[PruneTarget], masks: dict[str, torch.Tensor]
) -> TrainableSubset:
    """Freeze everything, then unfreeze the configured subsets (adding the LoRA parametrization where asked)."""
    subset = TrainableSubset(requires_grad=requires_grad_flags(model))  # put back by merge, after the Trainer run
    for name in list_recovery_subsets():
        subset.settings.update(get_recovery_subset(name).recorded)
    subset.total = sum(p.numel() for p in model.parameters())
    model.requires_grad_(False)
    chosen: dict[str, nn.Parameter] = {}
    # registry order, the low-rank update last: the recorded names do not depend on the order the user gave
    for kind in (get_recovery_subset(n) for n in list_recovery_subsets() if n in cfg.subset):
        if kind.lora:
            continue
        params = kind.parameters(model, targets)
        chosen.update(params)
        if params:
            subset.names.setdefault(kind.name, []).extend(params)
        subset.settings.update(kind.settings(model))
    if not subset.names and not cfg.lora:
        raise ValueError(f"subset={cfg.subset} selects no parameter of this model (e.g. it has no biases)")
    by_param = {id(t.parameter): t.name for t in targets if t.index is None}
    for param in chosen.values():
        param.requires_grad_(True)
        if id(param) in by_param and by_param[id(param)] in masks:  # a pruned weight trained directly (a head)
            subset.masked_params.append((param, masks[by_param[id(param)]]))
    if cfg.lora:
        lowrank = get_recovery_subset(cfg.lora).parametrization
        subset.lora_modules = attach_lora(lowrank, targets, cfg, masks)
        subset.names[cfg.lora] = list(subset.lora_modules)
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
