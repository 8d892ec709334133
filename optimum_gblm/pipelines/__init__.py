"""Pipelines: a registry of ways to prune a model (data-free and sequential for mask-based methods, structured for
methods that remove heads and channels), with placement and intermediates as hook points (see placement.py).

A method names its pipeline (`PruningMethod.pipeline`) or leaves it to its statistic: datafree for a score that needs
no forward pass, sequential otherwise (`GBLMConfig.pipeline` chooses between those two). `prune_model` is the one
route every prune takes."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .base import BlockHandler, Pipeline, PruneRequest, Walk
from .datafree import DataFreePipeline
from .masking import BlockPruner, MaskPipeline
from .placement import BlockByBlock, IntermediatesStore, Placement, WholeModel, place_model
from .sequential import SequentialPipeline
from .structured import StructuredPipeline

if TYPE_CHECKING:
    from ..configuration import GBLMConfig
    from ..pruning_map import PruningMap

logger = logging.getLogger(__name__)
_PIPELINES: dict[str, type[Pipeline]] = {}


def register_pipeline(cls: type[Pipeline]) -> type[Pipeline]:
    if cls.name in _PIPELINES:
        raise ValueError(f"A pipeline named {cls.name!r} is already registered")
    _PIPELINES[cls.name] = cls
    return cls


def list_pipelines() -> list[str]:
    return list(_PIPELINES)


def pipeline_class(config: GBLMConfig) -> type[Pipeline]:
    """The pipeline the config's method declares; for a method that declares none, the config's choice, where
    `auto` picks datafree for methods without input statistics, else sequential."""
    from ..methods import get_method

    method = get_method(config.method)
    name = method.pipeline or config.pipeline
    if name == "auto":
        name = "datafree" if method.statistic is None else "sequential"
    if name not in _PIPELINES:
        raise ValueError(f"pipeline={name!r} is unknown: choose one of {', '.join(list_pipelines())}")
    return _PIPELINES[name]


def pipeline_for(config: GBLMConfig, placement: Placement | None = None) -> Pipeline:
    """The config's pipeline (`pipeline_class`), with its placement and intermediates."""
    return pipeline_class(config)(placement, config.intermediates)


def prune_model(request: PruneRequest, placement: Placement | None = None) -> PruningMap:
    """Prune `request.model` in place with the pipeline its config's method runs on; returns the pruning map."""
    start = time.perf_counter()
    pruning_map = pipeline_for(request.config, placement).prune(request)
    logger.info(
        "Pruned %d targets with %s (%s): sparsity %.4f in %.1f s",
        len(pruning_map.targets),
        request.config.method,
        pruning_map.pattern,
        pruning_map.overall_sparsity,
        time.perf_counter() - start,
    )
    return pruning_map


for _cls in (DataFreePipeline, SequentialPipeline, StructuredPipeline):
    register_pipeline(_cls)

__all__ = [
    "BlockByBlock",
    "BlockHandler",
    "BlockPruner",
    "IntermediatesStore",
    "MaskPipeline",
    "Pipeline",
    "Placement",
    "PruneRequest",
    "Walk",
    "WholeModel",
    "list_pipelines",
    "pipeline_class",
    "pipeline_for",
    "place_model",
    "prune_model",
    "register_pipeline",
]
