"""`run_recovery`: the body of `GBLMPruner.recover` (checks, masks, subset, training, merge, the recover stage)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..evaluation.metrics import find_metric
from ..pruning_map import STRUCTURED, PruningMap, Stage
from ..targets import PruneTarget
from .config import RecoveryConfig
from .lora import lora_targets
from .subsets import check_masks, make_trainable, merge
from .train import build_windows, check_output_dir, train

logger = logging.getLogger(__name__)

METHOD = "perp"


def target_masks(targets: list[PruneTarget], pruning_map: PruningMap | None) -> dict[str, torch.Tensor]:
    """Each target's mask (True = pruned): the one the pruning kept in memory, else its exact zeros (a map read from
    a side-car, or a checkpoint saved without one, keeps no masks; a weight that training happened to drive to
    exactly zero is then kept at zero too)."""
    masks = {}
    for target in targets:
        if target.index is not None:
            continue
        try:
            masks[target.name] = pruning_map.mask(target.name) if pruning_map is not None else None
        except KeyError:
            masks[target.name] = None
        if masks[target.name] is None:
            masks[target.name] = target.weight() == 0
        masks[target.name] = masks[target.name].to(target.weight().device)
    return masks


def load_teacher(teacher: Any, cfg: RecoveryConfig, model: nn.Module) -> nn.Module | None:
    """The dense teacher for distillation: the module given, or the config's folder / Hub id."""
    teacher = teacher if teacher is not None else cfg.teacher
    if not cfg.distill:
        if teacher is not None:
            logger.warning("a teacher was given but distill_weight=0: training without distillation")
        return None
    if teacher is None:
        raise ValueError("distill_weight > 0 needs a dense teacher: pass teacher= (a model) or RecoveryConfig.teacher")
    if isinstance(teacher, str):
        from transformers import AutoModelForCausalLM

        dtype = next(model.parameters()).dtype
        teacher = AutoModelForCausalLM.from_pretrained(teacher, dtype=dtype)
    out, student = teacher.get_output_embeddings(), model.get_output_embeddings()
    if out is None or student is None or out.weight.shape[0] != student.weight.shape[0]:
        raise ValueError("the teacher must be a causal LM with the student's vocabulary (same output size)")
    return teacher


@dataclass
class RecoverySubject:
    """The model a recovery retrains, and what the recovery reads beside it: its adapter and pruning config (which
    targets it has), its pruning map (None: the zeros of the weights are the masks), tokenizer and device."""

    model: nn.Module
    adapter: Any
    config: Any
    pruning_map: PruningMap | None
    tokenizer: Any
    device: Any

    def targets(self) -> list[PruneTarget]:
        return self.adapter.select_targets(self.model, self.config)


@dataclass
class RecoveryResult:
    """The pruning map with its "recover" stage (without a prune stage for a model that came without a pruning
    record), the stage's settings and the training's seconds."""

    pruning_map: PruningMap
    settings: dict[str, Any]
    seconds: float


def run_recovery(
    subject: RecoverySubject,
    cfg: RecoveryConfig,
    teacher: Any = None,
    measure: Callable[[str], float] | None = None,
    callbacks: list | None = None,
    progress: bool = True,
) -> RecoveryResult:
    """Retrain `cfg`'s subset of `subject.model` in place with every pruned weight kept at zero. `measure(label)`
    (optional) evaluates the model before ("pruned"; "dense" without zeros; "loaded" for zeros without a pruning record)
    and after ("recovered") training."""
    cfg.validate()
    model = subject.model
    metric = find_metric(getattr(subject.adapter, "metric_name", ""))
    if metric is None or metric.inputs != "text" or model.get_output_embeddings() is None:
        raise ValueError("recovery retrains decoder LLMs (causal language models); this model is not one")
    targets = subject.targets()
    masks = target_masks(targets, subject.pruning_map)
    pruned = sum(int(m.sum()) for m in masks.values())
    if subject.pruning_map is not None and subject.pruning_map.pattern == STRUCTURED:
        pruned = pruned or 1  # pruned by removal: its smaller matrices hold no zeros to keep, and stay as they are
        logger.info("structured checkpoint: the removed heads and channels stay removed; its zeros, if any, are kept")
    elif pruned == 0:
        logger.warning("the model was not pruned (no zero in its prune targets): recovery runs as plain fine-tuning")
    elif subject.pruning_map is None:
        share = pruned / sum(m.numel() for m in masks.values())
        logger.warning(
            "the model came without a pruning record: its exact zeros (%.2f%% of its prune targets' weights) are kept "
            "and it is described as recovered, with no claim about how it was pruned",
            100 * share,
        )
    # Everything that can be refused is checked before the (slow) training starts.
    if cfg.lora:
        lora_targets(targets, cfg)
    check_output_dir(cfg)
    windows = build_windows(subject.tokenizer, cfg)
    teacher_model = load_teacher(teacher, cfg, model)
    before = None
    if measure is not None:  # measured again even when already measured: before and after share the same settings
        before = measure(
            "pruned" if pruned and subject.pruning_map is not None else "dense" if not pruned else "loaded"
        )
    start = time.perf_counter()
    subset = make_trainable(model, cfg, targets, masks)
    try:
        record = train(model, cfg, windows, subset, subject.device, teacher_model, callbacks, progress)
    finally:
        merge(model, subset)
    check_masks(model, subject.targets(), masks)
    seconds = time.perf_counter() - start
    settings = {
        **{k: v for k, v in cfg.to_dict().items() if k not in ("output_dir", "resume", "logging_steps")},
        **subset.describe(),
        "tokens": cfg.max_steps * cfg.batch_size * cfg.seqlen,
        "time_s": round(seconds, 1),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()},
    }
    if measure is not None:
        settings[f"{metric.metric_name}_before"] = before
        settings[f"{metric.metric_name}_after"] = measure("recovered")
    pruning_map = subject.pruning_map
    if pruning_map is None:  # no pruning record (a model without its side-car): its zeros, and no invented prune
        pruning_map = derived_map(targets, masks)
    pruning_map.stages.append(Stage("recover", METHOD, settings))
    logger.info(
        "Recovered in %.1f s: %d trainable parameters, %d tokens",
        settings["time_s"],
        subset.trainable,
        settings["tokens"],
    )
    return RecoveryResult(pruning_map, settings, seconds)


def derived_map(targets: list[PruneTarget], masks: dict[str, torch.Tensor]) -> PruningMap:
    """The exact zeros of a model that came without a pruning record, as targets of an unstructured map with no
    prune stage (cards then say "no pruning record" instead of naming a method, a pattern or a sparsity)."""
    pruning_map = PruningMap(pattern="unstructured")
    for target in targets:
        if target.name in masks:
            pruning_map.record(target.name, target.weight(), float(masks[target.name].float().mean()))
    return pruning_map
