"""The structured pipeline: the methods that remove whole attention heads / key-value groups and MLP channels
(`PruningMethod.pipeline = "structured"`) run here; the machinery is `optimum_gblm.structured` (docs/structured.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..structured import check_structured, prune_structured
from .base import Pipeline, PruneRequest

if TYPE_CHECKING:
    from torch import nn

    from ..adapters import ModelAdapter
    from ..configuration import GBLMConfig
    from ..pruning_map import PruningMap


class StructuredPipeline(Pipeline):
    name = "structured"
    description = "one pass of the dense model for every block's statistics, then heads and channels removed"
    needs_data = True

    @classmethod
    def check(cls, model: nn.Module, adapter: ModelAdapter, config: GBLMConfig) -> None:
        """The family and the fraction, before any heavy work."""
        check_structured(model, adapter, config, config.args)

    def prune(self, request: PruneRequest) -> PruningMap:
        self.placement.prepare(request.model)
        return prune_structured(
            request.model, request.adapter, request.config, request.calibration, request.gradients, request.progress
        )
