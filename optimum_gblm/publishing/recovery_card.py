"""The model card's "Recovery" part: one table per `recover` stage of the side-car's pruning map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evaluation import find_metric, list_metrics
from ..recovery import RecoverySubset, get_recovery_subset, list_recovery_subsets


def _subsets(settings: dict[str, Any]) -> list[tuple[str, RecoverySubset | None]]:
    """The stage's subsets with their registered definitions (None: a subset this installation does not know)."""
    known = list_recovery_subsets()
    return [(k, get_recovery_subset(k) if k in known else None) for k in settings.get("subset", [])]


def _rows(settings: dict[str, Any]) -> list[tuple[str, str]]:
    counts = settings.get("parameters") or {}
    subsets = _subsets(settings)
    parts = [f"{s.card_text if s else k} ({counts.get(k, 0)} tensors)" for k, s in subsets]
    parts += [note for _, s in subsets if s and (note := s.card_note(settings))]
    rows = [
        ("Trained parameters", "; ".join(parts)),
        (
            "Trainable",
            f"{settings.get('trainable_params', 0):,} of {settings.get('total_params', 0):,} "
            f"({settings.get('trainable_share', 0.0):.3%})",
        ),
        (
            "Budget",
            f"{settings.get('max_steps')} steps x {settings.get('batch_size')} windows x {settings.get('seqlen')} "
            f"tokens = {settings.get('tokens', 0):,} tokens, learning rate {settings.get('learning_rate'):g}, "
            f"{settings.get('time_s', 0):.0f} s",
        ),
        ("Training text", f"`{Path(str(settings.get('source'))).name}` (seed {settings.get('seed')})"),
    ]
    if any(s.lora if s else k.endswith("lora") for k, s in subsets):
        rows.append(("LoRA", f"rank {settings.get('lora_rank')}, alpha {settings.get('lora_alpha'):g}"))
    if settings.get("distill_weight"):
        rows.append(
            (
                "Distillation",
                f"KL to the dense model's logits, weight {settings['distill_weight']:g}, "
                f"temperature {settings.get('temperature'):g}",
            )
        )
    for metric in (find_metric(name) for name in list_metrics()):
        if f"{metric.metric_name}_before" in settings:
            before, after = settings[f"{metric.metric_name}_before"], settings[f"{metric.metric_name}_after"]
            rows.append((metric.label, f"{metric.format_value(before)} before, {metric.format_value(after)} after"))
    return rows


def recovery_section(sidecar: dict[str, Any]) -> str:
    """Markdown for the recover stages (empty when there is none); every pruned weight stayed exactly zero."""
    stages = [s for s in (sidecar.get("pruning_map") or {}).get("stages", []) if s.get("kind") == "recover"]
    if not stages:
        return ""
    recorded = any(s.get("kind") == "prune" for s in (sidecar.get("pruning_map") or {}).get("stages", []))
    parts = [
        "\n\n### Recovery\n\nAfter pruning, a small parameter subset was retrained (PERP) with the transformers "
        "Trainer; every pruned weight is still exactly zero."
        if recorded
        else "\n\n### Recovery\n\nA small parameter subset was retrained (PERP) with the transformers Trainer; every "
        "weight of the prune targets that was exactly zero is still exactly zero."
    ]
    for stage in stages:
        rows = _rows(stage.get("settings") or {})
        parts.append("| Aspect | Value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows))
    return "\n\n".join(parts)
