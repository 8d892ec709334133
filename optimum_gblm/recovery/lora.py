"""The low-rank updates of the LoRA recovery subsets (MaskLoRA, ScaleLoRA): `torch.nn.utils.parametrize`
parametrizations of the pruned weights.

The function the Trainer optimises is exactly the function that is merged: MaskLoRA computes `W + s * (B @ A) *
keep` (the update only reaches kept weights), ScaleLoRA `W * (1 + s * B @ A)` (zeros stay zero by construction).
peft's LoRA layers add `x @ A.T @ B.T` beside the frozen weight, which cannot be masked: masking only at merge would
change the trained function, so peft is not used here.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..targets import PruneTarget
from .config import RecoveryConfig


class LowRank(nn.Module):
    """A rank-r product `B @ A` scaled by alpha / r; B starts at zero, so training starts from the pruned model.
    `masked`: the parametrization is given the keep mask (True = kept) of its weight, else None."""

    masked: ClassVar[bool] = True

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


class MaskLoRA(LowRank):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta(weight) * self.keep  # bool keep: 1 byte per weight saved for backward


class ScaleLoRA(LowRank):
    masked = False  # zeros stay zero without a mask

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (1 + self.delta(weight))


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


def attach_lora(
    lowrank: type[LowRank], targets: list[PruneTarget], cfg: RecoveryConfig, masks: dict[str, torch.Tensor]
) -> dict[str, tuple[nn.Module, torch.Tensor | None]]:
    """Parametrize every LoRA target's weight with `lowrank`; returns target name -> (module, its pruned mask)."""
    attached = {}
    for i, target in enumerate(lora_targets(targets, cfg)):
        weight = target.module.weight
        keep = ~masks[target.name].to(weight.device) if target.name in masks else torch.ones_like(weight, dtype=bool)
        keep = keep.bool() if getattr(lowrank, "masked", True) else None
        lora = lowrank(target.shape, cfg.lora_rank, cfg.lora_alpha, keep, cfg.seed * 100003 + i)
        parametrize.register_parametrization(target.module, "weight", lora.to(weight.device))
        attached[target.name] = (target.module, masks.get(target.name))
    return attached
