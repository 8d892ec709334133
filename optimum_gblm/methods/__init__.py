"""Pruning methods and their registry. `register_method` is public: a new method is one decorated class."""

from __future__ import annotations

# The built-in methods register themselves at their definition site, in this order.
from . import gblm, wanda, sparsegpt, magnitude, gblm_obs, structured_units, recon  # noqa: F401  isort: skip
from .base import MethodArgs, PruningMethod, TargetJob
from .registry import DEFAULT_METHOD, all_groups, argument_owners, get_method, list_methods, register_method

__all__ = [
    "DEFAULT_METHOD",
    "MethodArgs",
    "PruningMethod",
    "TargetJob",
    "all_groups",
    "argument_owners",
    "get_method",
    "list_methods",
    "register_method",
]
