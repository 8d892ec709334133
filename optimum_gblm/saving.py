"""Write a pruned model as one self-describing folder, atomically."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .serialization import atomic_directory, write_sidecar

if TYPE_CHECKING:
    from .pruner import GBLMPruner

logger = logging.getLogger(__name__)


def save_pruned(
    pruner: GBLMPruner,
    save_directory: str | Path,
    overwrite: bool = False,
    model_card: bool = True,
    repo_id: str | None = None,
) -> Path:
    """Weights + config + tokenizer / preprocessing (the adapter's native format), `gblm_config.json`, card.

    `repo_id` (set by `push_to_hub`) is recorded so the card's snippets name the repo the folder goes to.
    """
    target = Path(save_directory)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        pruner.adapter.save(pruner.model, tmp, pruner)
        sidecar = pruner.sidecar()
        # Environment-dependent card inputs are resolved once here, so the card re-renders from the side-car alone.
        from .cards import write_model_card, write_sparsity_plot
        from .hub import base_model_license

        sidecar.setdefault("license", base_model_license(pruner.model_id, pruner.model))
        sidecar.setdefault("evaluation", dict(getattr(pruner, "evaluation", None) or {}))
        if repo_id:
            sidecar["repo_id"] = repo_id
        write_sidecar(tmp, sidecar)
        write_sparsity_plot(tmp, sidecar)
        if model_card:
            write_model_card(tmp, sidecar)
    logger.info("Saved %s to %s", "pruned model" if pruner.report else "model", target)
    return target.absolute()
