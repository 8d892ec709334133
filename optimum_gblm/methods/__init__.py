"""Registry of pruning methods, keyed by name."""

from __future__ import annotations

from .base import LayerJob, PruningMethod
from .gblm import GBLMPruning, GradientPruning
from .magnitude import MagnitudePruning
from .sparsegpt import GBLMOBSPruning, SparseGPTPruning
from .wanda import WandaPruning

_REGISTRY: dict[str, PruningMethod] = {}


def register_method(method: PruningMethod) -> PruningMethod:
    if method.name in _REGISTRY:
        raise ValueError(f"A pruning method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> PruningMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"method={name!r} is unknown: choose one of {', '.join(list_methods())}") from None


def list_methods() -> list[str]:
    return list(_REGISTRY)


for _cls in (GBLMPruning, GradientPruning, WandaPruning, SparseGPTPruning, MagnitudePruning, GBLMOBSPruning):
    register_method(_cls())

__all__ = ["LayerJob", "PruningMethod", "get_method", "list_methods", "register_method"]
