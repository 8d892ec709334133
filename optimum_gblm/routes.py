"""Which combinations of placement and gradient options can run, decided once, before any heavy work.

`placement="disk"` never holds the whole model, so it cannot run a gradient pass (whole-model or block-wise, one
pass or two): with a method or allocation that needs gradients, they must come from an accumulation already held or
a complete cache written by another run. `prune` (the CLI, before loading), `GBLMPruner.prune` (before the
calibration set is built) and the planner (`plan`) all ask `check_gradient_route`, so the planner never approves
what pruning refuses; the error names the route that works, in the reader's terms.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fields import OptionError, PerReader

if TYPE_CHECKING:
    from .configuration import GBLMConfig

ROUTE = PerReader(  # the route that works, for each reader
    library=(
        "collect them first into a cache with placement='memory' or 'cpu' "
        "(GBLMPruner.from_pretrained(model, config).collect_gradients(cache_path=CACHE)), then call "
        "prune(gradients=CACHE) with placement='disk'"
    ),
    cli=(
        "collect them first with `optimum-cli gblm gradients --output CACHE` (the same model, calibration and "
        "gradient options, without --placement disk), then run `optimum-cli gblm prune --placement disk "
        "--gradients CACHE`"
    ),
)


class GradientRouteError(OptionError):
    """A placement that cannot run the gradient pass the config needs; the message names the route that works."""


def check_gradient_route(config: GBLMConfig, gradients: Any = None) -> None:
    """Refuse (`GradientRouteError`) a disk placement whose gradients would need a gradient pass. `gradients`: what
    the run reads, a cache path (only a complete cache is read without running the model) or an accumulation
    already held (anything else: nothing to run)."""
    held = gradients is not None and not isinstance(gradients, (str, Path))
    if config.placement != "disk" or not config.needs_gradients or held:
        return
    from .gradients.cache import reusable_cache

    for option, why in (
        ("blockwise_gradients", "its pass runs every block's backward over all samples"),
        ("two_pass_gradients", "its two passes cannot read a cache"),
    ):
        if getattr(config, option):
            raise GradientRouteError(
                "placement",
                "{opt}'disk' never holds the whole model, which the gradient pass needs, also with "
                + f"{{flag:{option}}} ({why}): drop {{name:{option}}} and {{route}}",
                route=ROUTE,
            )
    if reusable_cache(gradients):
        return
    missing = (
        "no gradients were given"
        if gradients is None
        else f"{str(gradients)!r} is not a complete gradient cache (this run would have to write it)"
    )
    raise GradientRouteError(
        "placement",
        "{opt}'disk' never holds the whole model, which the gradient pass needs (method {method!r}, allocation "
        "{allocation!r}), and {missing}: {route}",
        method=config.method,
        allocation=config.effective_allocation,
        missing=missing,
        route=ROUTE,
    )
