"""The pipeline interface: a pipeline walks the blocks of a model, owns placement and the intermediates, and hands
each block's targets (with their input statistics, when the method needs them) to a block handler that decides and
applies the pruning."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..statistics import InputStatistics
from ..targets import PruneTarget
from .placement import Placement, WholeModel

if TYPE_CHECKING:
    from torch import nn

    from ..adapters import ModelAdapter

# (block index, the block's targets, statistics by target name; the targets of one input site share one object)
BlockHandler = Callable[[int, list[PruneTarget], dict[str, InputStatistics]], None]
# (block index, the pruned block, its targets, the block's calibration inputs per batch group as (states, kwargs), the
# dense outputs per group): adjusts the block's kept weights after its targets were pruned (methods/recon.py)
BlockRefiner = Callable[[int, "nn.Module", list[PruneTarget], list[tuple[Any, dict[str, Any]]], list[Any]], None]


@dataclass
class Walk:
    """One walk over a model's blocks: `targets[i]` are block i's targets, `handler` prunes them. `statistic` is what
    the handler's method needs per input site ("activations", "hessian" or None), from `samples`."""

    model: nn.Module
    adapter: ModelAdapter
    targets: Sequence[list[PruneTarget]]
    handler: BlockHandler
    statistic: str | None = None
    samples: Sequence[Any] = ()
    batch_size: int = 1
    progress: bool = True
    desc: str = "blocks"
    # Optional step after the handler: `refine` gets the block's dense outputs as targets, computed from the pruned
    # model's stream ("block") or from the dense model's own stream ("model", kept beside it).
    refine: BlockRefiner | None = None
    refine_target: str = "block"


class Pipeline:
    name: ClassVar[str]
    description: ClassVar[str]
    needs_data: ClassVar[bool]

    def __init__(self, placement: Placement | None = None, intermediates: str = "device") -> None:
        self.placement = placement or WholeModel("cpu")
        self.intermediates = intermediates

    def run(self, walk: Walk) -> None:
        """Walk every block of `walk.model`, handing each block's targets (and statistics) to `walk.handler`."""
        raise NotImplementedError
