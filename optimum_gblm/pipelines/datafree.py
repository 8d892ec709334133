"""The data-free pipeline: scores that need no forward pass (magnitude, gradient-only) prune block by block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ..targets import PruneTarget
from ..utils import inference_mode
from .base import BlockHandler, Pipeline

if TYPE_CHECKING:
    from torch import nn

    from ..adapters import ModelAdapter


class DataFreePipeline(Pipeline):
    name = "datafree"
    description = "no calibration forward pass: every block's targets are pruned from their weights (and gradients)"
    needs_data = False

    def run(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        targets: Sequence[list[PruneTarget]],
        handler: BlockHandler,
        *,
        statistic: str | None = None,
        samples: Sequence[Any] = (),
        batch_size: int = 1,
        progress: bool = True,
        desc: str = "blocks",
    ) -> None:
        if statistic is not None:
            raise ValueError(f"the datafree pipeline collects no {statistic} statistics: use the sequential pipeline")
        self.placement.prepare(model)
        with inference_mode(model):
            for index, block in enumerate(tqdm(adapter.blocks(model), desc=desc, disable=not progress)):
                if not targets[index]:
                    continue
                self.placement.onload(block)
                handler(index, targets[index], {})
                self.placement.offload(block)
