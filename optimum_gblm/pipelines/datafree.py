"""The data-free pipeline: scores that need no forward pass (magnitude, gradient-only) prune block by block."""

from __future__ import annotations

from tqdm.auto import tqdm

from ..utils import inference_mode
from .base import Walk
from .masking import MaskPipeline


class DataFreePipeline(MaskPipeline):
    name = "datafree"
    description = "no calibration forward pass: every block's targets are pruned from their weights (and gradients)"
    needs_data = False

    def run(self, walk: Walk) -> None:
        if walk.statistic is not None:
            raise ValueError(f"the datafree pipeline collects no {walk.statistic} statistics: use the sequential one")
        self.placement.prepare(walk.model)
        with inference_mode(walk.model):
            blocks = walk.adapter.blocks(walk.model)
            for index, block in enumerate(tqdm(blocks, desc=walk.desc, disable=not walk.progress)):
                if not walk.targets[index]:
                    continue
                self.placement.onload(block)
                walk.handler(index, walk.targets[index], {})
                self.placement.offload(block)
