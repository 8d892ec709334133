"""The pipeline interface: a pipeline prunes a model for one method kind (`prune(request) -> PruningMap`), owns the
placement and the intermediates, and checks before any heavy work that it can prune the model (`check`).

The mask-based pipelines (masking.py) walk the blocks and hand each block's targets (with their input statistics,
when the method needs them) to a block handler that decides and applies the pruning; the structured pipeline
(structured.py) scores and removes whole heads and channels. A method declares its pipeline (`PruningMethod.pipeline`),
or gets datafree / sequential from its statistic."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..statistics import InputStatistics
from ..targets import PruneTarget
from .placement import Placement, WholeModel

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..adapters import ModelAdapter
    from ..configuration import GBLMConfig
    from ..pruning_map import PruningMap

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


@dataclass
class PruneRequest:
    """Everything one prune reads: the model and its adapter, the config, the calibration samples (empty for a
    pipeline that needs no data), the selection's gradient sums by target name (None when the method reads none)
    and the allocated sparsity of each target (empty: `config.sparsity` everywhere)."""

    model: nn.Module
    adapter: ModelAdapter
    config: GBLMConfig
    calibration: Sequence[Any] = ()
    gradients: Mapping[str, torch.Tensor] | None = None
    sparsities: dict[str, float] = field(default_factory=dict)
    progress: bool = True


class Pipeline:
    name: ClassVar[str]
    description: ClassVar[str]
    needs_data: ClassVar[bool]

    def __init__(self, placement: Placement | None = None, intermediates: str = "device") -> None:
        self.placement = placement or WholeModel("cpu")
        self.intermediates = intermediates

    @classmethod
    def check(cls, model: nn.Module, adapter: ModelAdapter, config: GBLMConfig) -> None:
        """Refuse, before any heavy work, a model this pipeline cannot prune with `config` (`ValueError`)."""
        adapter.check_targets(model, config)

    def prune(self, request: PruneRequest) -> PruningMap:
        """Prune `request.model` in place and return what was pruned."""
        raise NotImplementedError
