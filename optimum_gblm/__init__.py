"""optimum-gblm: gradient-based pruning (GBLM-Pruner) with Wanda, SparseGPT and magnitude baselines.

The public API. Heavy parts (the Trainer callback, the Hub client, the zoo) are imported on first use, so
`import optimum_gblm` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from .configuration import GBLMConfig
from .methods import MethodArgs, PruningMethod, TargetJob, list_methods, register_method
from .version import __version__

_LAZY = {
    "GBLMPruner": ".pruner",
    "GBLMGradientCallback": ".gradients.trainer",
    "GradientAccumulation": ".gradients",
    "GradientCollector": ".gradients",
    "collect_gradients": ".gradients",
    "ModelAdapter": ".adapters",
    "register_adapter": ".adapters",
    "PruneTarget": ".targets",
    "PruningMap": ".pruning_map",
    "load_pruned": ".structured",
    "RecoveryConfig": ".recovery",
    "RecoverySubset": ".recovery",
    "register_recovery_subset": ".recovery",
    "Evaluation": ".evaluation",
    "Evaluator": ".evaluation",
    "register_metric": ".evaluation",
    "render_model_card": ".publishing.cards",
    "verify_checkpoint": ".publishing.checkpoint",
    "HubPublishError": ".publishing.hub",
    "push_folder": ".publishing.hub",
    "ZooResult": ".zoo",
    "load_manifest": ".zoo",
    "publish_zoo": ".zoo",
}

__all__ = [
    "GBLMConfig",
    "MethodArgs",
    "PruningMethod",
    "TargetJob",
    "__version__",
    "list_methods",
    "register_method",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
