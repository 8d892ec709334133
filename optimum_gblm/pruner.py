"""`GBLMPruner`: the user's verbs. load -> calibrate -> (gradients) -> prune -> evaluate -> save / push.

Each step hands the next one object: the calibration set, the gradient accumulation, the pruning map. The pipeline
owns the walk over the blocks and the placement of the model; the pruner only wires the pieces together.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import ModelAdapter, get_adapter
from .configuration import GBLMConfig
from .evaluation import DEFAULT_EVAL_WINDOWS, DEFAULT_IMAGE_BATCH, Evaluation, Evaluator, make_evaluator
from .evaluation.harness import DEFAULT_TASK_BATCH, TaskEvaluator
from .evaluation.verbs import TASKS_DEPRECATED, chosen_options
from .gradient_phase import GradientSubject, allocate, collect, run_gradient_phase, without_allocation_sums
from .gradients import GradientAccumulation
from .pipelines import Placement, PruneRequest, pipeline_class, prune_model
from .pipelines.offload import placement_for
from .pruning_map import PruningMap
from .publishing.provenance import check_base_model_option
from .publishing.sidecar import base_record, origin_map, origin_sidecar
from .routes import check_gradient_route
from .targets import PruneTarget
from .utils import resolve_device, suggest_keywords

logger = logging.getLogger(__name__)


class GBLMPruner:
    """Prune a decoder LLM or a timm ViT with GBLM, Wanda, SparseGPT, magnitude, gblm-obs or a registered method.

    >>> pruner = GBLMPruner.from_pretrained("path/or/id", GBLMConfig(method="gblm", sparsity=0.5))
    >>> model = pruner.prune()
    >>> pruner.save_pretrained("pruned-model")
    """

    def __init__(
        self,
        model: nn.Module,
        config: GBLMConfig | None = None,
        tokenizer: Any = None,
        model_id: str | None = None,
        adapter: ModelAdapter | None = None,
        preprocessing: dict[str, Any] | None = None,
        base_model: str | None = None,
    ) -> None:
        self.config = config or GBLMConfig()
        self.config.validate()
        resolve_device(self.config.device)
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.base_model = check_base_model_option(base_model)
        self.adapter = adapter or get_adapter(model)
        self.preprocessing = preprocessing or self.adapter.preprocessing()
        self.calibration: Any = None
        self._calibration_from_config = False  # built from the config's source (so its seed applies)
        self.gradients: GradientAccumulation | None = None
        self.pruning_map: PruningMap | None = None
        self.sparsities: dict[str, float] = {}
        self.results: dict[str, float] = {}
        self.timings: dict[str, float] = {}
        self.evaluation: dict[str, dict[str, Any]] = {}  # label -> evaluation settings, for the model card
        self.task_results: dict[str, dict[str, Any]] = {}  # label -> lm-eval task -> metrics and settings
        self._evaluator: Evaluator | None = None
        self.recovery: dict[str, Any] | None = None  # the last recover() stage's settings
        self.origin = origin_sidecar(model_id)  # the loaded checkpoint's side-car: its lineage carries over
        self._placement: Placement | None = None
        pipeline_class(self.config).check(self.model, self.adapter, self.config)  # before any heavy work

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | nn.Module | None = None,
        config: GBLMConfig | None = None,
        base_model: str | None = None,
        check_memory: bool = True,
        **load_kwargs: Any,
    ) -> GBLMPruner:
        """Load a model (Hub id, local folder, timm name, or an instance; None = the embedded SmolLM2-135M).

        `base_model` is the Hub id the model is published under, for the card's metadata and link when `model` is a
        local folder or an instance (without it, a local model is named in plain text, never linked).
        `check_memory`: plan the peak memory first (planning.py) and refuse a run that cannot fit, with the numbers."""
        from .loading import load_for_pruning

        config = config or GBLMConfig()
        loaded = load_for_pruning(model, config, base_model, check_memory, **load_kwargs)
        return cls(
            loaded.model,
            config,
            tokenizer=loaded.tokenizer,
            model_id=loaded.model_id,
            adapter=loaded.adapter,
            preprocessing=loaded.preprocessing,
            base_model=base_model,
        )

    def __getattr__(self, name: str) -> Any:  # only reached for attributes that do not exist
        if name == "report":  # format 1's per-layer report became the pruning map
            raise AttributeError("GBLMPruner.report is now GBLMPruner.pruning_map (print it for a summary)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def targets(self) -> list[PruneTarget]:
        return self.adapter.select_targets(self.model, self.config)

    @property
    def placement(self) -> Placement:
        if self._placement is None:  # one per pruner: a disk placement records what it wrote
            self._placement = placement_for(self.config, self.model, self.adapter.block_path)
        return self._placement

    # -- steps ----------------------------------------------------------------------------------------------------
    def calibration_data(self, calibration: Any = None) -> Any:
        """The calibration set (built once): samples of the config's source, or the tensors given here."""
        if calibration is not None:
            self.calibration = self.adapter.make_calibration(calibration, self.config)
            self._calibration_from_config = False
        if self.calibration is None:
            self.calibration = self.adapter.build_calibration(self.config, self.tokenizer, self.preprocessing)
            self._calibration_from_config = True
        return self.calibration

    def gradient_subject(self) -> GradientSubject:
        """The dense model and its calibration set, as the gradient phase reads them."""
        calibration = self.calibration_data()
        return GradientSubject(
            self.model, self.adapter, self.config, self.placement, calibration, self._calibration_from_config
        )

    def collect_gradients(
        self,
        cache_path: str | Path | None = None,
        checkpoint_every: int = 0,
        progress: bool = True,
        overwrite: bool = False,
        norms: tuple[str, ...] | None = None,
        **kwargs: Any,
    ) -> GradientAccumulation:
        """Per-sample gradient pass of the dense model over the pruner's own calibration set. `cache_path`: a
        matching complete cache is reused, a partial one resumed, one made for anything else refused (the error
        names what differs; the file is left untouched) unless `overwrite`. `norms`: the accumulations to keep
        (default: every one the config needs)."""
        if self.pruning_map is not None:
            raise RuntimeError("the model is already pruned: gradients must come from the dense model")
        subject = self.gradient_subject()
        self.gradients, self.timings["gradients_s"] = collect(
            subject, cache_path, checkpoint_every, progress, overwrite, norms, **kwargs
        )
        return self.gradients

    def prune(
        self,
        calibration: Any = None,
        gradients: GradientAccumulation | str | Path | None = None,
        progress: bool = True,
    ) -> nn.Module:
        """Prune the model in place and return it. `calibration`: the calibration set instead of the config's source
        (text models: token ids, as a [N, seqlen] tensor, a DataLoader or a list of samples; image models: images and
        labels). `gradients`: an accumulation, or a cache file path (written when missing, reused when it matches this
        model, these calibration tokens in any order and the gradient settings, refused otherwise)."""
        if self.pruning_map is not None:
            raise RuntimeError("this pruner has already pruned its model")
        cfg = self.config
        check_gradient_route(cfg, self.gradients if gradients is None else gradients)  # before the calibration
        needs_data = pipeline_class(cfg).needs_data
        if needs_data or cfg.needs_gradients or calibration is not None:
            self.calibration_data(calibration)
        allocation = None  # made between two gradient passes
        if cfg.needs_gradients:
            if isinstance(gradients, GradientAccumulation):
                self.gradients = gradients
            elif gradients is not None or self.gradients is None:
                phase = run_gradient_phase(self.gradient_subject(), gradients, progress)
                self.gradients, allocation = phase.accumulation, phase.allocation
                self.timings.update(phase.timings)
        start = time.perf_counter()
        if cfg.effective_allocation == "gradient":  # a share of prune_s, unless made between two passes
            if allocation is None:
                allocation, self.timings["allocation_s"] = allocate(self.gradient_subject(), self.gradients)
            self.sparsities = allocation
            self.gradients = without_allocation_sums(cfg, self.gradients)
        request = PruneRequest(
            self.model,
            self.adapter,
            cfg,
            calibration=self.calibration if needs_data else (),
            gradients=self.gradients.get(cfg.gradient_norm) if cfg.selection_uses_gradients else None,
            sparsities=self.sparsities,
            progress=progress,
        )
        self.pruning_map = prune_model(request, self.placement)
        self.origin = base_record(self.origin)  # pruned again: only the base model still holds
        self.timings["prune_s"] = time.perf_counter() - start
        return self.model

    def recover(
        self,
        config: Any = None,
        *,
        teacher: Any = None,
        evaluate: bool | dict[str, Any] = False,
        callbacks: list | None = None,
        progress: bool = True,
    ) -> nn.Module:
        """Retrain a small parameter subset (PERP: norms, biases, head, MaskLoRA / ScaleLoRA) with the transformers
        Trainer, keeping every pruned weight exactly zero; adds a "recover" stage to the pruning map (a loaded
        checkpoint's, from its side-car). `config`: a `RecoveryConfig`; `teacher`: the dense model for distillation;
        `evaluate`: measure perplexity before and after (True, or `evaluate()` keyword arguments). docs/recovery.md"""
        from .recovery import RecoveryConfig, run_recovery
        from .recovery.run import RecoverySubject

        measure = None
        if evaluate:
            options = {"progress": progress, **(evaluate if isinstance(evaluate, dict) else {})}
            measure = lambda label: self.evaluate(label, **options)  # noqa: E731
        pruning_map = self.pruning_map or origin_map(self.origin)  # a loaded checkpoint's record
        subject = RecoverySubject(
            self.model, self.adapter, self.config, pruning_map, self.tokenizer, self.placement.device
        )
        result = run_recovery(subject, config or RecoveryConfig(), teacher, measure, callbacks, progress)
        self.pruning_map, self.recovery = result.pruning_map, result.settings
        self.timings["recover_s"] = result.seconds
        return self.model

    # -- publishing -------------------------------------------------------------------------------------------------
    def sidecar(self, repo_id: str | None = None, base_model: str | None = None) -> dict[str, Any]:
        """The `gblm_config.json` content (format 2): config, provenance, pruning map, calibration, results."""
        from .publishing.sidecar import build_sidecar

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
            tasks=self.task_results,
            origin=self.origin,
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
        from .publishing.checkpoint import check_pruned, save_checkpoint

        check_pruned(self.pruning_map, allow_dense)
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
        from .publishing.checkpoint import check_pruned
        from .publishing.hub import push_saved

        check_pruned(self.pruning_map, allow_dense)
        options = dict(private=private, token=token, commit_message=commit_message, revision=revision)
        return push_saved(
            lambda folder, overwrite: self.save_pretrained(
                folder, overwrite, repo_id=repo_id, allow_dense=allow_dense
            ),
            repo_id,
            **options,
            endpoint=endpoint,
            save_directory=save_directory,
            overwrite=overwrite,
            allow_dense=allow_dense,
        )

    # -- evaluation -------------------------------------------------------------------------------------------------
    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = make_evaluator(self.adapter, self.tokenizer, self.preprocessing, self.config.seqlen)
        return self._evaluator

    @suggest_keywords(windows="max_windows", eval_windows="max_windows", eval_seqlen="seqlen", eval_source="source")
    def evaluate(
        self,
        label: str | None = None,
        *,
        source: str | None = None,
        seqlen: int | None = None,
        max_windows: int | None = DEFAULT_EVAL_WINDOWS,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        split: str = "validation",
        batch_size: int = DEFAULT_IMAGE_BATCH,
        progress: bool = True,
        tasks: Sequence[str] | None = None,
        limit: int | float | None = None,
        num_fewshot: int | None = None,
        max_gen_toks: int | None = None,
    ) -> float | dict[str, dict[str, float]]:
        """Measure the adapter's metric, store it in `results[f"{label}_{metric}"]` and every setting it was measured
        with in `evaluation[label]` (the card shows them). `label` defaults to "dense" before pruning, else "pruned".

        Perplexity (LLMs): the first `max_windows` non-overlapping windows (default 40; None evaluates all of them)
        of `seqlen` tokens (default: the config's calibration seqlen) of `source`: "offline-corpus" (the default,
        the embedded corpus's held-out slice), "wikitext2" (test split) or a text file.

        Top-1 accuracy (ViTs): `images` and `labels` tensors, or an image folder / dataset `source` and its `split`,
        in batches of `batch_size`; later calls reuse the set of the first one.

        Deprecated: `tasks` (with `limit`, `num_fewshot`, `max_gen_toks`) runs lm-eval tasks, as
        `evaluate_tasks(tasks, label, ...)` does (a FutureWarning; removed in the next release).
        """
        given = {"source": source, "seqlen": seqlen, "max_windows": max_windows, "images": images}
        given.update(labels=labels, split=split, batch_size=batch_size, progress=progress)
        given.update(limit=limit, num_fewshot=num_fewshot, max_gen_toks=max_gen_toks)
        if tasks is not None:
            warnings.warn(TASKS_DEPRECATED, FutureWarning, stacklevel=3)  # 3: past suggest_keywords' wrapper
            return self.evaluate_tasks(tasks, label, **chosen_options(TaskEvaluator, given))
        chosen = chosen_options(self.evaluator, given)  # refused before the model is prepared
        self.placement.prepare_whole(self.model, "an evaluation")
        measured = self.evaluator.evaluate(self.model, **chosen)
        self.add_evaluation(label or ("pruned" if self.pruning_map is not None else "dense"), measured)
        return measured.value

    def evaluate_tasks(
        self,
        tasks: Sequence[str] | str,
        label: str | None = None,
        *,
        limit: int | float | None = None,
        num_fewshot: int | None = None,
        max_gen_toks: int | None = None,
        batch_size: int = DEFAULT_TASK_BATCH,
        progress: bool = True,
    ) -> dict[str, dict[str, float]]:
        """Run lm-eval tasks (lm-eval names, task YAML files, "knowledge_probe"; docs/evaluation.md) with `limit`
        examples per task, `num_fewshot`, the `max_gen_toks` cap of generation tasks and `batch_size` requests per
        batch: returns {task: {metric: value}}, kept with everything recorded per task in `task_results[label]`
        (default label: "dense" before pruning, else "pruned")."""
        evaluator = TaskEvaluator(self.tokenizer, seed=self.config.seed)
        self.placement.prepare_whole(self.model, "an evaluation")
        measured = evaluator.evaluate(
            self.model,
            tasks,
            limit=limit,
            num_fewshot=num_fewshot,
            max_gen_toks=max_gen_toks,
            batch_size=batch_size,
            progress=progress,
        )
        label = label or ("pruned" if self.pruning_map is not None else "dense")
        self.task_results[label] = {**self.task_results.get(label, {}), **measured.settings}
        return measured.value

    def add_evaluation(self, label: str, measured: Evaluation) -> None:
        """Record a measurement under `label`, e.g. a dense value measured once and shared by several prunes of the
        same base model with the same settings (the zoo does this)."""
        self.results[f"{label}_{self.adapter.metric_name}"] = measured.value
        self.evaluation[label] = dict(measured.settings)
