"""The publishing verbs of `GBLMPruner` (side-car, save, push), kept apart from the pruning steps.

`PublishingMixin` reads the pruner's state (model, config, adapter, pruning map, results) and never imports the
pruner: the import direction stays pruner -> publishing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from ..adapters import ModelAdapter
    from ..configuration import GBLMConfig
    from ..pipelines import Placement
    from ..pruning_map import PruningMap


class PublishingMixin:
    """`sidecar`, `save_pretrained`, `push_to_hub` for an object with the attributes annotated below."""

    model: nn.Module
    config: GBLMConfig
    tokenizer: Any
    model_id: str | None
    base_model: str | None
    adapter: ModelAdapter
    calibration: Any
    pruning_map: PruningMap | None
    results: dict[str, float]
    timings: dict[str, float]
    evaluation: dict[str, dict[str, Any]]
    placement: Placement  # writes the weights (a disk placement assembles its pruned shards)

    def sidecar(self, repo_id: str | None = None, base_model: str | None = None) -> dict[str, Any]:
        """The `gblm_config.json` content (format 2): config, provenance, pruning map, calibration, results."""
        from .sidecar import build_sidecar

        return build_sidecar(
            config=self.config,
            model=self.model,
            model_id=self.model_id,
            adapter=self.adapter,
            base_model=base_model or self.base_model,
            pruning_map=self.pruning_map,
            calibration=None if self.calibration is None else self.adapter.describe_calibration(self.calibration),
            results=self.results,
            timings=self.timings,
            evaluation=self.evaluation,
            repo_id=repo_id,
            tasks=getattr(self, "task_results", None),
        )

    def save_pretrained(
        self,
        save_directory: str | Path,
        overwrite: bool = False,
        model_card: bool = True,
        repo_id: str | None = None,
        allow_dense: bool = False,
        base_model: str | None = None,
    ) -> Path:
        """Write weights (the family's native format, exact zeros), tokenizer / preprocessing, side-car and card,
        atomically. `repo_id` (set by `push_to_hub`) makes the card's snippets name the repo the folder goes to;
        `base_model` names the base model's Hub id for this save. A model that was not pruned is refused unless
        `allow_dense=True`, which saves it labelled dense (no pruning map, a card that claims no sparsity)."""
        from .checkpoint import save_checkpoint

        self._check_pruned(allow_dense)
        return save_checkpoint(
            save_directory,
            lambda folder: self.placement.save_model(self.model, folder, self.adapter, self.tokenizer),
            self.sidecar(repo_id, check_base_model_option(base_model)),
            overwrite=overwrite,
            model_card=model_card,
        )

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        endpoint: str | None = None,
        save_directory: str | Path | None = None,
        overwrite: bool = False,
        allow_dense: bool = False,
    ) -> str:
        """Save with `save_pretrained` (to a temporary folder unless `save_directory`) and upload that exact folder,
        generated card included. Returns the commit URL (a str with `.oid`). A model that was not pruned is refused
        unless `allow_dense=True` (then published labelled dense)."""
        from .hub import push_saved

        self._check_pruned(allow_dense)
        return push_saved(
            lambda folder, overwrite: self.save_pretrained(
                folder, overwrite=overwrite, repo_id=repo_id, allow_dense=allow_dense
            ),
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            revision=revision,
            endpoint=endpoint,
            save_directory=save_directory,
            overwrite=overwrite,
            allow_dense=allow_dense,
        )

    def _check_pruned(self, allow_dense: bool) -> None:
        """Refuse, before anything is written or sent, to save or publish a model that was never pruned."""
        if self.pruning_map is None and not allow_dense:
            raise RuntimeError(
                "this model was not pruned: call prune() before saving or pushing it, or pass allow_dense=True to "
                "save it as a dense checkpoint (labelled dense, no pruning map)"
            )


def check_base_model_option(base_model: str | None) -> str | None:
    """The Hub id the user names as the base model, checked before anything is loaded or written."""
    from .provenance import check_base_model

    return check_base_model(base_model) if base_model else None
