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

from .adapters import ModelAdapter, get_adapter, load_model
from .configuration import GBLMConfig
from .decisions import BlockPruner
from .evaluation import DEFAULT_EVAL_WINDOWS, DEFAULT_IMAGE_BATCH, Evaluation, Evaluator, make_evaluator
from .evaluation.harness import DEFAULT_TASK_BATCH, TaskEvaluator
from .evaluation.verbs import TASKS_DEPRECATED, chosen_options
from .gradient_steps import GradientStepsMixin
from .gradients import GradientAccumulation
from .methods import get_method
from .pipelines import Placement, Walk, pipeline_for
from .pipelines.offload import offloaded_model, placement_for
from .planning import check_memory_plan
from .pruning_map import PruningMap, Stage, prune_settings
from .publishing.mixin import PublishingMixin, check_base_model_option
from .targets import PruneTarget
from .utils import check_calibration_source, resolve_device, suggest_keywords

logger = logging.getLogger(__name__)


class GBLMPruner(GradientStepsMixin, PublishingMixin):
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
        self._pass_allocation: dict[str, float] | None = None  # computed between two gradient passes
        self.results: dict[str, float] = {}
        self.timings: dict[str, float] = {}
        self.evaluation: dict[str, dict[str, Any]] = {}  # label -> evaluation settings, for the model card
        self.task_results: dict[str, dict[str, Any]] = {}  # label -> lm-eval task -> metrics and settings
        self._evaluator: Evaluator | None = None
        self.recovery: dict[str, Any] | None = None  # the last recover() stage's settings
        self._check_targets()

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
        config = config or GBLMConfig()
        config.validate()
        check_base_model_option(base_model)
        resolve_device(config.device)  # a missing device or calibration file is refused before loading anything
        check_calibration_source(config.calibration)
        if check_memory and not isinstance(model, nn.Module):
            check_memory_plan(model, config)
        if config.placement == "disk":  # built on the meta device; each block is read when the pipeline reaches it
            model, load_kwargs = offloaded_model(model, config, **load_kwargs)
        loaded = load_model(model, config, **load_kwargs)
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

    # -- checks before heavy work ---------------------------------------------------------------------------------
    def targets(self) -> list[PruneTarget]:
        return self.adapter.select_targets(self.model, self.config)

    def _check_targets(self) -> None:
        if get_method(self.config.method).structured:  # the family and the fraction, before any heavy work
            from .structured import check_structured

            check_structured(self.model, self.adapter, self.config, self.config.args)
            return
        self.adapter.check_targets(self.model, self.config)

    @property
    def placement(self) -> Placement:
        if getattr(self, "_placement", None) is None:  # one per pruner: a disk placement records what it wrote
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

    def prune(
        self,
        calibration: Any = None,
        gradients: GradientAccumulation | str | Path | None = None,
        progress: bool = True,
    ) -> nn.Module:
        """Prune the model in place and return it.

        `calibration`: the calibration set instead of the config's source: for text models token ids (a
        [N, seqlen] tensor, a DataLoader or a list of samples: dicts with input_ids, tensors), for image models
        images (and labels). `gradients`: an accumulation, or a cache file path (written when it does not exist,
        reused when it matches this model, these calibration tokens in any order and the gradient settings,
        refused otherwise).
        """
        if self.pruning_map is not None:
            raise RuntimeError("this pruner has already pruned its model")
        cfg = self.config
        method = get_method(cfg.method)
        pipeline = pipeline_for(cfg, self.placement)
        if pipeline.needs_data or cfg.needs_gradients or calibration is not None:
            self.calibration_data(calibration)
        if cfg.needs_gradients:
            if isinstance(gradients, GradientAccumulation):
                self.gradients = gradients
            elif gradients is not None or self.gradients is None:
                self._gradient_passes(gradients, progress)
        start = time.perf_counter()
        if method.structured:  # whole heads and channels removed (docs/structured.md)
            from .structured import prune_structured

            self.placement.prepare(self.model)
            grads = self.gradients.get(cfg.gradient_norm) if cfg.selection_uses_gradients else None
            self.pruning_map = prune_structured(self.model, self.adapter, cfg, self.calibration, grads, progress)
            self.timings["prune_s"] = time.perf_counter() - start
            return self.model
        per_block = self.adapter.targets_by_block(self.model, cfg.targets, cfg.ignore)
        if cfg.effective_allocation == "gradient":  # unless allocated between two gradient passes
            two_pass = self._pass_allocation is not None and "l2" not in self.gradients.norms
            self.sparsities = self._pass_allocation if two_pass else self._allocate()  # _allocate: a share of prune_s
            self._release_allocation_sums()
        pruning_map = PruningMap(pattern=cfg.pattern)
        grads = self.gradients.get(cfg.gradient_norm) if cfg.selection_uses_gradients else None
        refine, refine_target = method.refiner(cfg) or (None, "block")
        pipeline.run(
            Walk(
                self.model,
                self.adapter,
                per_block,
                BlockPruner(cfg, pruning_map, grads, self.sparsities),
                statistic=method.statistic,
                samples=self.calibration if pipeline.needs_data else (),
                batch_size=cfg.batch_size,
                progress=progress,
                desc=f"{cfg.method}: blocks",
                refine=refine,
                refine_target=refine_target,
            )
        )
        pruning_map.stages.append(Stage("prune", cfg.method, prune_settings(cfg.to_dict())))
        self.pruning_map = pruning_map
        self.timings["prune_s"] = time.perf_counter() - start
        logger.info(
            "Pruned %d targets with %s (%s): overall sparsity %.4f in %.1f s",
            len(pruning_map.targets),
            cfg.method,
            cfg.pattern,
            pruning_map.overall_sparsity,
            self.timings["prune_s"],
        )
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
        Trainer, keeping every pruned weight exactly zero; adds a "recover" stage to the pruning map. `config`: a
        `RecoveryConfig`; `teacher`: the dense model for distillation; `evaluate`: measure perplexity before and
        after (True, or `evaluate()` keyword arguments). See docs/recovery.md."""
        from .recovery import RecoveryConfig, run_recovery

        config = config or RecoveryConfig()
        return run_recovery(self, config, teacher, evaluate, callbacks, progress)

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
