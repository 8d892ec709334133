"""Loading a model for pruning: every check that can refuse a run happens before a weight is read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .adapters import load_model
from .pipelines.offload import offloaded_model
from .planning import check_memory_plan
from .publishing.provenance import check_base_model_option
from .utils import check_calibration_source, resolve_device

if TYPE_CHECKING:
    from .adapters.base import LoadedModel
    from .configuration import GBLMConfig


def load_for_pruning(
    model: str | Path | nn.Module | None,
    config: GBLMConfig,
    base_model: str | None = None,
    check_memory: bool = True,
    **load_kwargs: Any,
) -> LoadedModel:
    """The config, the base model's Hub id, the device, a local calibration source and (with `check_memory`) the
    planned peak memory are checked first; then the model is loaded (with `placement="disk"` on the meta device,
    each block read when the pipeline reaches it)."""
    config.validate()
    check_base_model_option(base_model)
    resolve_device(config.device)
    check_calibration_source(config.calibration)
    source = model
    if config.placement == "disk":  # its own checks of the folder come first: they say what disk placement needs
        model, load_kwargs = offloaded_model(model, config, **load_kwargs)
    if check_memory and not isinstance(source, nn.Module):
        check_memory_plan(source, config)
    return load_model(model, config, **load_kwargs)
