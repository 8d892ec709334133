"""Write a pruned model as one self-describing folder, atomically."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .serialization import atomic_directory, write_sidecar

if TYPE_CHECKING:
    from .pruner import GBLMPruner

logger = logging.getLogger(__name__)


def save_pruned(pruner: GBLMPruner, save_directory: str | Path, overwrite: bool = False, model_card: bool = True) -> Path:
    """Weights + config + tokenizer / preprocessing (the adapter's native format), `gblm_config.json`, card."""
    target = Path(save_directory)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        pruner.adapter.save(pruner.model, tmp, pruner)
        sidecar = pruner.sidecar()
        write_sidecar(tmp, sidecar)
        if model_card:
            from .cards import write_model_card

            write_model_card(tmp, sidecar)
    logger.info("Saved %s to %s", "pruned model" if pruner.report else "model", target)
    return target.absolute()
