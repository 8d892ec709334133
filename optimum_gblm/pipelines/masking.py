"""Mask-based pruning (every method that zeroes weights in place): the block handler that builds each target's job,
lets the method decide, applies the mask and records it in the map, and the base of the pipelines that walk the
blocks for it (datafree, sequential)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ..masks import NonFiniteScoresError, check_finite, select_mask
from ..methods import TargetJob, get_method
from ..pruning_map import PruningMap, Stage, prune_settings
from .base import Pipeline, PruneRequest, Walk

if TYPE_CHECKING:
    from ..configuration import GBLMConfig
    from ..statistics import InputStatistics
    from ..targets import PruneTarget

logger = logging.getLogger(__name__)


class BlockPruner:
    """Prunes the targets a pipeline hands over, with `config.method`, and records each one in `pruning_map`.

    `gradients` maps target names to their accumulated gradient norm G (methods that need gradients);
    `sparsities` maps target names to allocated sparsities (default: `config.sparsity`).
    """

    def __init__(
        self,
        config: GBLMConfig,
        pruning_map: PruningMap,
        gradients: Mapping[str, torch.Tensor] | None = None,
        sparsities: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.method = get_method(config.method)
        self.args = config.args
        self.group = config.effective_group
        self.pruning_map = pruning_map
        self.gradients = gradients
        self.sparsities = sparsities or {}

    def __call__(self, index: int, targets: list[PruneTarget], stats: dict[str, InputStatistics]) -> None:
        for target in targets:
            sparsity = self.sparsities.get(target.name, self.config.sparsity)
            job = TargetJob(
                name=target.name,
                weight=target.weight(),
                sparsity=sparsity,
                pattern=self.config.pattern,
                group=self.group,
                args=self.args,
                stats=stats.get(target.name),
                gradient=None if self.gradients is None else self.gradients.get(target.name),
                score_dtype=self.config.score_dtype,
            )
            if self.method.needs_gradients and job.gradient is None:
                raise RuntimeError(
                    f"{target.name}: method {self.method.name!r} needs gradients, none were collected for it"
                )
            try:
                check_finite(job.weight, "weights")
                if job.stats is not None and job.stats.tokens < target.min_tokens:
                    # A routed expert that (almost) no calibration token reached: its statistics say nothing, so it
                    # is pruned by the data-free score |W| in the same pattern and group (docs/families.md#experts).
                    logger.warning(
                        "%s received %d calibration tokens (< %d): pruned by |W| instead of %s",
                        target.name,
                        job.stats.tokens,
                        target.min_tokens,
                        self.method.name,
                    )
                    # SparseGPT's column blocks share one exact total per matrix: the layer count is the same.
                    group = "row" if job.group == "row" else "layer"
                    mask = select_mask(job.weight.abs().float(), sparsity, job.pattern, group)
                    job.weight.masked_fill_(mask, 0)
                else:
                    self.method.prune(job)
            except NonFiniteScoresError as err:  # name the layer: the kernels only see tensors
                raise NonFiniteScoresError(f"{target.name} (method {self.method.name!r}): {err}") from None
            self.pruning_map.record(target.name, job.weight, sparsity, target.input_site)
        logger.debug("block %d: %d targets pruned", index, len(targets))


class MaskPipeline(Pipeline):
    """A pipeline for mask-based methods: it walks the blocks (`run`), and `BlockPruner` prunes each block's targets
    with the method, in place, recording each one in the pruning map."""

    def run(self, walk: Walk) -> None:
        """Walk every block of `walk.model`, handing each block's targets (and statistics) to `walk.handler`."""
        raise NotImplementedError

    def prune(self, request: PruneRequest) -> PruningMap:
        cfg, model, adapter = request.config, request.model, request.adapter
        method = get_method(cfg.method)
        pruning_map = PruningMap(pattern=cfg.pattern)
        refine, refine_target = method.refiner(cfg) or (None, "block")
        self.run(
            Walk(
                model,
                adapter,
                adapter.targets_by_block(model, cfg.targets, cfg.ignore),
                BlockPruner(cfg, pruning_map, request.gradients, request.sparsities),
                statistic=method.statistic,
                samples=request.calibration if self.needs_data else (),
                batch_size=cfg.batch_size,
                progress=request.progress,
                desc=f"{cfg.method}: blocks",
                refine=refine,
                refine_target=refine_target,
            )
        )
        pruning_map.stages.append(Stage("prune", cfg.method, prune_settings(cfg.to_dict())))
        return pruning_map
