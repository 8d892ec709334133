"""Structured methods: score whole attention heads and MLP channels, which `optimum_gblm.structured` then removes
(docs/structured.md). A structured method scores; it never zeroes weights itself.

Scores are per query head (the input channels of `o_proj` that one head writes) and per MLP channel (one input
channel of `down_proj`, with its `gate_proj` / `up_proj` rows). `ranking` says how scores of different layers and
kinds are compared in the adaptive mode: "standardized" (z-scores per layer and kind, FLAP's rule) or "per-param"
(scores already in loss units: the lowest score per removed parameter goes first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..fields import OPEN_UNIT, field_spec
from .base import MethodArgs, PruningMethod, TargetJob
from .registry import register_method

MODES = ("adaptive", "uniform")
ATTENTION_UNITS = ("group", "head")
BIAS_HELP = "Add the removed channels' mean contribution as o_proj / down_proj bias."


@dataclass
class StructuredArgs(MethodArgs):
    mode: str = field(
        default="adaptive",
        metadata=field_spec(
            "adaptive: one global ranking decides each layer's width; uniform: every layer the same.", choices=MODES
        ),
    )
    attention_unit: str = field(
        default="group",
        metadata=field_spec(
            "group: remove whole key/value groups with their query heads; head: remove the same number of "
            "query heads from every group (keys and values stay).",
            choices=ATTENTION_UNITS,
        ),
    )
    bias_compensation: bool = field(default=True, metadata=field_spec(BIAS_HELP))
    min_mlp_keep: float = field(
        default=0.05,
        metadata=field_spec("Smallest fraction of MLP channels every layer keeps, in (0, 1).", bounds=OPEN_UNIT),
    )


@dataclass
class WandaSPArgs(StructuredArgs):
    mode: str = field(
        default="uniform", metadata=field_spec("adaptive (one global ranking) or uniform (default).", choices=MODES)
    )
    bias_compensation: bool = field(default=False, metadata=field_spec(BIAS_HELP))


@dataclass
class LayerEvidence:
    """What a structured method may read for one block: weights by short name ("self_attn.o_proj", ...), the
    fluctuation statistics of the four input sites ("self_attn.input", "self_attn.o_proj", "mlp.input",
    "mlp.down_proj"), the accumulated gradients G by short name (gradient methods) and the head size."""

    weights: dict[str, torch.Tensor]
    stats: dict[str, Any]
    head_dim: int
    gradients: dict[str, torch.Tensor] | None = None


class StructuredMethod(PruningMethod):
    structured = True
    pipeline = "structured"
    statistic = "fluctuation"
    groups = ("structure",)
    args = StructuredArgs
    ranking: ClassVar[str] = "standardized"

    def check_config(self, config: Any) -> None:
        if config.pattern != "unstructured":
            raise ValueError(
                f"pattern={config.pattern!r} is not available for the structured method {self.name!r}: it removes "
                "whole heads and channels; leave pattern='unstructured' (sparsity is the fraction of block "
                "parameters removed)"
            )
        if config.targets or config.ignore:
            raise ValueError(
                f"targets / ignore do not apply to the structured method {self.name!r}: it shrinks every block's "
                "attention and MLP together"
            )
        if config.allocation == "gradient":
            raise ValueError(
                f"allocation='gradient' does not apply to the structured method {self.name!r}: its mode argument "
                "(adaptive or uniform) decides the widths"
            )
        if getattr(config, "placement", "memory") == "disk":
            raise ValueError(
                f"placement='disk' does not apply to the structured method {self.name!r}: it changes the shapes of the "
                "model's matrices, so the model must be in memory; use placement='memory' or 'cpu'"
            )

    def unit_scores(self, layer: LayerEvidence, args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(per query head, per MLP channel) scores, higher = more important, float64."""
        raise NotImplementedError

    def prune(self, job: TargetJob) -> torch.Tensor:
        raise RuntimeError(f"{self.name!r} is structured: GBLMPruner.prune() removes whole heads and channels")


def _per_head(channel_scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    return channel_scores.reshape(-1, head_dim).sum(dim=1)


def _fluctuation(weight: torch.Tensor, stats: Any) -> torch.Tensor:
    """Per input channel j: sample variance of x_j over calibration tokens times ||W[:, j]||^2."""
    return stats.channel_variance() * weight.double().pow(2).sum(dim=0)


@register_method
class FLAPPruning(StructuredMethod):
    name = "flap"
    description = "structured: input variance x squared weight column per head / channel, bias compensation (FLAP)"
    card_description = (
        "FLAP, whole attention heads and MLP channels removed by their fluctuation (input variance times squared "
        "weight column), standardised per layer, with bias compensation"
    )

    def unit_scores(self, layer: LayerEvidence, args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        o_proj = _fluctuation(layer.weights["self_attn.o_proj"], layer.stats["self_attn.o_proj"])
        heads = _per_head(o_proj, layer.head_dim)
        return heads, _fluctuation(layer.weights["mlp.down_proj"], layer.stats["mlp.down_proj"])


def _wanda(weight: torch.Tensor, stats: Any, dim: int) -> torch.Tensor:
    return (weight.double().abs() * stats.activation_sq_mean().double().sqrt().reshape(1, -1)).sum(dim=dim)


@register_method
class WandaSPPruning(StructuredMethod):
    name = "wanda-sp"
    args = WandaSPArgs
    description = "structured: Wanda's |W| * ||x|| summed over each head / channel's weights (Wanda-sp)"
    card_description = (
        "Wanda-sp, whole attention heads and MLP channels removed by Wanda's score summed over their weights"
    )

    def unit_scores(self, layer: LayerEvidence, args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        w, s, hd = layer.weights, layer.stats, layer.head_dim
        heads = _per_head(_wanda(w["self_attn.o_proj"], s["self_attn.o_proj"], 0), hd)
        heads = heads + _per_head(_wanda(w["self_attn.q_proj"], s["self_attn.input"], 1), hd)
        channels = _wanda(w["mlp.down_proj"], s["mlp.down_proj"], 0)
        for name in ("mlp.gate_proj", "mlp.up_proj"):
            channels = channels + _wanda(w[name], s["mlp.input"], 1)
        return heads, channels


def _fisher(layer: LayerEvidence, name: str, compensated: bool) -> torch.Tensor:
    """Per input channel j of `name`: sum_i W_ij^2 G_ij^2, the diagonal-Fisher loss estimate of zeroing the column
    (with the l2 norm; up to the constant c^2 N). With bias compensation only the share of the channel's energy that
    the mean cannot carry, var_j / E[x_j^2], is lost."""
    weight, gradient = layer.weights[name].double(), layer.gradients[name].to(layer.weights[name].device).double()
    score = (weight * gradient).pow(2).sum(dim=0)
    if compensated:
        stats = layer.stats[name]
        energy = stats.channel_variance() + stats.channel_mean().pow(2)
        score = score * stats.channel_variance() / energy.clamp_min(1e-30)
    return score


@register_method
class GBLMStructuredPruning(StructuredMethod):
    name = "gblm-sp"
    needs_gradients = True
    ranking = "per-param"
    description = "structured: per-sample-gradient Fisher of each head / channel x its fluctuation share, global"
    card_description = (
        "gblm-sp, whole attention heads and MLP channels removed by the diagonal Fisher of their output-projection "
        "weights (accumulated per-sample gradients) times the share of the input that bias compensation cannot "
        "carry, ranked globally per removed parameter"
    )

    def unit_scores(self, layer: LayerEvidence, args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if layer.gradients is None:
            raise RuntimeError(f"method {self.name!r} needs gradients, none were collected")
        compensated = bool(args.bias_compensation)
        heads = _per_head(_fisher(layer, "self_attn.o_proj", compensated), layer.head_dim)
        return heads, _fisher(layer, "mlp.down_proj", compensated)
