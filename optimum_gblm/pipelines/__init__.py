"""Calibration pipelines: a registry of ways to walk a model (data-free, sequential), with placement and
intermediates as hook points (see placement.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import BlockHandler, Pipeline, Walk
from .datafree import DataFreePipeline
from .placement import BlockByBlock, IntermediatesStore, Placement, WholeModel, place_model
from .sequential import SequentialPipeline

if TYPE_CHECKING:
    from ..configuration import GBLMConfig

_PIPELINES: dict[str, type[Pipeline]] = {}


def register_pipeline(cls: type[Pipeline]) -> type[Pipeline]:
    if cls.name in _PIPELINES:
        raise ValueError(f"A pipeline named {cls.name!r} is already registered")
    _PIPELINES[cls.name] = cls
    return cls


def list_pipelines() -> list[str]:
    return list(_PIPELINES)


def pipeline_for(config: GBLMConfig, placement: Placement | None = None) -> Pipeline:
    """The config's pipeline; `auto` picks datafree for methods without input statistics, else sequential."""
    from ..methods import get_method

    name = config.pipeline
    if name == "auto":
        name = "datafree" if get_method(config.method).statistic is None else "sequential"
    if name not in _PIPELINES:
        raise ValueError(f"pipeline={name!r} is unknown: choose one of {', '.join(list_pipelines())}")
    return _PIPELINES[name](placement, config.intermediates)


for _cls in (DataFreePipeline, SequentialPipeline):
    register_pipeline(_cls)

__all__ = [
    "BlockByBlock",
    "BlockHandler",
    "IntermediatesStore",
    "Pipeline",
    "Placement",
    "Walk",
    "WholeModel",
    "list_pipelines",
    "pipeline_for",
    "place_model",
    "register_pipeline",
]
