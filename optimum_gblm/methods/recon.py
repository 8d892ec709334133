"""sparsegpt-recon: SparseGPT's masks and OBS update, then mask-preserving block reconstruction with block-local
gradients (docs/semantics.md#15-sparsegpt-recon).

After the sequential pipeline has pruned a block's targets, a few Adam steps adjust the block's kept target weights
so that the block's outputs on its calibration inputs match the dense outputs (mean squared error). The gradient is
the block reconstruction loss's, taken over the whole block (attention and MLP together), which the per-matrix OBS
update cannot see. Every zero of the pruned weights stays exactly zero: their gradients are masked and they are
re-zeroed after every step. No labels and no model-level backward pass: the work is block-local.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..blocks import run_block
from ..fields import POSITIVE, field_spec
from ..masks import check_finite
from ..utils import model_state
from .registry import register_method
from .sparsegpt import SparseGPTArgs, SparseGPTPruning

logger = logging.getLogger(__name__)

RECON_TARGETS = ("block", "model")


@dataclass
class SparseGPTReconArgs(SparseGPTArgs):
    recon_steps: int = field(default=16, metadata={"help": "Adam steps of block reconstruction per block."})
    recon_lr: float = field(
        default=2e-4, metadata=field_spec("Adam learning rate of the block reconstruction (> 0).", bounds=POSITIVE)
    )
    # One group (8 windows at the default batch_size) per step: a quarter of the work of 4 groups per step and, at
    # twice the rate, as good or better on SmolLM2 2:4 (BENCHMARKS.md, issue 19).
    recon_batch: int = field(
        default=1, metadata={"help": "Calibration groups (one batch_size forward each) per reconstruction step."}
    )
    recon_target: str = field(
        default="model",
        metadata=field_spec(
            "What the pruned block's outputs are matched to: block (the dense block on the same inputs) or "
            "model (the dense model's own states at the block's output, which also corrects earlier blocks' drift).",
            choices=RECON_TARGETS,
        ),
    )


def reconstruction_error(
    block: nn.Module, inputs: list[tuple[torch.Tensor, dict[str, Any]]], dense_out: list[torch.Tensor]
) -> float:
    """Mean squared error of the block's outputs against `dense_out`, over every calibration group."""
    dtype = next(block.parameters()).dtype
    with torch.no_grad():
        total = sum(
            float(torch.nn.functional.mse_loss(run_block(block, x, kw, dtype).float(), y.float(), reduction="sum"))
            for (x, kw), y in zip(inputs, dense_out)
        )
    return total / sum(y.numel() for y in dense_out)


def reconstruct_block(
    block: nn.Module,
    weights: list[torch.nn.Parameter],
    inputs: list[tuple[torch.Tensor, dict[str, Any]]],
    dense_out: list[torch.Tensor],
    steps: int,
    lr: float,
    batch: int,
) -> None:
    """Adam on the kept entries of `weights` (the block's pruned parameters) so that the block's outputs match
    `dense_out`; every zero stays zero. Steps take `batch` calibration groups in order, cycling. The weights are
    optimised in float32 (and written back in their own dtype)."""
    dtype = next(block.parameters()).dtype
    if dtype != torch.float32:
        block.float()  # Adam in half precision would lose the small updates
    try:
        keep = [p.detach() != 0 for p in weights]
        with model_state(block, trainable=weights, clear_grads=True), torch.enable_grad():
            optimizer = torch.optim.Adam(weights, lr=lr)
            for step in range(steps):
                optimizer.zero_grad(set_to_none=False)
                chosen = [(step * batch + k) % len(inputs) for k in range(min(batch, len(inputs)))]
                count = sum(dense_out[i].numel() for i in chosen)
                for i in chosen:
                    x, kw = inputs[i]
                    out = run_block(block, x, kw, torch.float32)
                    loss = torch.nn.functional.mse_loss(out, dense_out[i].to(out), reduction="sum") / count
                    loss.backward()
                for p, k in zip(weights, keep):
                    p.grad.mul_(k)
                optimizer.step()
                with torch.no_grad():
                    for p, k in zip(weights, keep):
                        p.mul_(k)
    finally:
        if dtype != torch.float32:
            block.to(dtype)
    for p in weights:
        check_finite(p.detach(), "reconstructed weights")


@register_method
class SparseGPTReconPruning(SparseGPTPruning):
    name = "sparsegpt-recon"
    args = SparseGPTReconArgs
    description = "SparseGPT, then a few Adam steps per block on the kept weights to match the dense block outputs"
    card_description = (
        "SparseGPT's OBS pruning followed by mask-preserving block reconstruction: a few Adam steps per block on the "
        "kept weights (block-local gradients of the output reconstruction error, no labels)"
    )

    def check_config(self, config: Any) -> None:
        if getattr(config, "placement", "memory") == "disk":
            raise ValueError(
                f"placement='disk' is not supported by method {self.name!r}: its block reconstruction needs the block "
                "in memory with gradients; use placement='memory' or 'cpu'"
            )

    def refiner(self, config: Any) -> tuple[Any, str] | None:
        args = config.args

        def refine(
            index: int,
            block: nn.Module,
            targets: list[Any],
            inputs: list[tuple[torch.Tensor, dict[str, Any]]],
            dense_out: list[torch.Tensor],
        ) -> None:
            # Whole parameters (a 3-D stack of experts too): their zeros, pruned or not, stay zero.
            weights = list({id(t.parameter): t.parameter for t in targets}.values())
            if logger.isEnabledFor(logging.DEBUG):  # two extra passes over the calibration set
                logger.debug(
                    "block %d: error before reconstruction %.4g", index, reconstruction_error(block, inputs, dense_out)
                )
            reconstruct_block(block, weights, inputs, dense_out, args.recon_steps, args.recon_lr, args.recon_batch)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "block %d: error after reconstruction %.4g", index, reconstruction_error(block, inputs, dense_out)
                )

        return refine, args.recon_target
