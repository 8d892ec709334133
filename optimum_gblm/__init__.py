"""optimum-gblm: gradient-based pruning (GBLM-Pruner) with Wanda, SparseGPT and magnitude baselines."""

from .cards import render_model_card
from .configuration import GBLMConfig
from .gradients import GradientAccumulation, GradientCollector, collect_gradients
from .hub import HubPublishError, push_folder
from .methods import list_methods
from .pruner import GBLMPruner
from .serialization import verify_checkpoint
from .version import __version__
from .zoo import ZooResult, load_manifest, publish_zoo

__all__ = [
    "GBLMConfig",
    "GBLMPruner",
    "GradientAccumulation",
    "GradientCollector",
    "HubPublishError",
    "ZooResult",
    "__version__",
    "collect_gradients",
    "list_methods",
    "load_manifest",
    "publish_zoo",
    "push_folder",
    "render_model_card",
    "verify_checkpoint",
]
