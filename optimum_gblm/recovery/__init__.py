"""Recovery after pruning (PERP): retrain a small parameter subset with the transformers Trainer, keep the sparsity.

The subsets are a registry (registry.py); the built-in ones register where they are defined (subsets.py, lora.py).
`run_recovery` (which imports the Trainer) is imported on first use, so the registry and the config stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import subsets  # noqa: F401  (registers the built-in subsets)
from .config import RecoveryConfig
from .registry import (
    RecoverySubset,
    get_recovery_subset,
    list_recovery_subsets,
    lora_subsets,
    register_recovery_subset,
)

__all__ = [
    "LORA_SUBSETS",
    "RecoveryConfig",
    "RecoverySubset",
    "SUBSETS",
    "get_recovery_subset",
    "list_recovery_subsets",
    "lora_subsets",
    "register_recovery_subset",
    "run_recovery",
]


def __getattr__(name: str) -> Any:
    if name in ("SUBSETS", "LORA_SUBSETS"):  # read from the registry: subsets registered later are included
        return getattr(importlib.import_module(".config", __name__), name)
    if name == "run_recovery":
        return importlib.import_module(".run", __name__).run_recovery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
