"""What the engine needs to know about a model family: where its blocks are, which linears to prune, its loss."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import nn


class ModelAdapter:
    """Model-family knowledge as data plus a few small hooks. Subclasses set the class attributes."""

    name: ClassVar[str]
    library: ClassVar[str]  # "transformers" or "timm": how checkpoints are saved and reloaded
    block_path: ClassVar[str]  # dotted path of the ModuleList of blocks
    block_linears: ClassVar[tuple[str, ...]]  # targeted linears, relative to a block

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.block_path)

    def target_linears(
        self, model: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None
    ) -> dict[str, nn.Linear]:
        """Fully qualified name -> linear, for every targeted linear of every block, in block order."""
        found: dict[str, nn.Linear] = {}
        for index, block in enumerate(self.blocks(model)):
            for fqn, module in self.block_targets(block, f"{self.block_path}.{index}", targets, ignore).items():
                found[fqn] = module
        return found

    def block_targets(
        self, block: nn.Module, prefix: str, targets: list[str] | None = None, ignore: list[str] | None = None
    ) -> dict[str, nn.Linear]:
        out: dict[str, nn.Linear] = {}
        for rel, module in block.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            fqn = f"{prefix}.{rel}"
            selected = any(re.search(p, fqn) for p in targets) if targets else rel in self.block_linears
            if selected and not any(re.search(p, fqn) for p in ignore or ()):
                out[fqn] = module
        return out

    # -- calibration batches --------------------------------------------------------------------------------------
    def forward(self, model: nn.Module, sample: Any) -> Any:
        """Run the model on one calibration sample (used to capture block inputs)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, sample: Any) -> torch.Tensor:
        """Scalar loss of one calibration sample, for the per-sample gradient pass."""
        raise NotImplementedError

    def sample_tokens(self, sample: Any) -> int:
        """Tokens (or patches) in one sample, for throughput reporting."""
        return 1
