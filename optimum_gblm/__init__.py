"""optimum-gblm: gradient-based pruning (GBLM-Pruner) with Wanda, SparseGPT and magnitude baselines."""

from .collection import collect_gradients
from .configuration import GBLMConfig
from .gradients import GradientAccumulation, GradientCollector
from .methods import list_methods
from .pruner import GBLMPruner
from .serialization import verify_checkpoint
from .version import __version__

__all__ = [
    "GBLMConfig",
    "GBLMPruner",
    "GradientAccumulation",
    "GradientCollector",
    "__version__",
    "collect_gradients",
    "list_methods",
    "verify_checkpoint",
]
