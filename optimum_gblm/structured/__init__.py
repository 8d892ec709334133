"""Structured pruning: remove whole attention heads / key-value groups and MLP channels (docs/structured.md)."""

from .blocks import influence_order, remove_blocks
from .plan import BlockShape, Kept, check_structured, select
from .runner import collect_statistics, prune_structured
from .surgery import STRUCTURE_KEY, load_pruned, shrink_block

__all__ = [
    "STRUCTURE_KEY",
    "BlockShape",
    "Kept",
    "check_structured",
    "collect_statistics",
    "influence_order",
    "load_pruned",
    "prune_structured",
    "remove_blocks",
    "select",
    "shrink_block",
]
