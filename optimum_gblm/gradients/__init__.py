"""The per-sample gradient pass (GBLM stage 1): accumulators, the collector, the collection loop and its cache.

`optimum_gblm.gradients.trainer` (the `transformers.Trainer` integration) is not imported here: it pulls in
`transformers.Trainer`, so it is loaded only where it is used.
"""

from .accumulation import GradientAccumulation, NonFiniteGradientError, gradient_passes, required_norms
from .cache import GradientCacheError, GradientCacheMismatch
from .collector import GradientCollector
from .loop import collect_gradients, run_collection

__all__ = [
    "GradientAccumulation",
    "GradientCacheError",
    "GradientCacheMismatch",
    "GradientCollector",
    "NonFiniteGradientError",
    "collect_gradients",
    "gradient_passes",
    "required_norms",
    "run_collection",
]
