"""The model card's "Recovery" part: one table per `recover` stage of the side-car's pruning map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUBSET_NAMES = {
    "norm": "normalisation weights and biases",
    "bias": "linear biases",
    "head": "output head",
    "masklora": "MaskLoRA (low-rank update of the kept weights, merged)",
    "scalelora": "ScaleLoRA (multiplicative low-rank update, merged)",
}


def _rows(settings: dict[str, Any]) -> list[tuple[str, str]]:
    counts = settings.get("parameters") or {}
    parts = [f"{SUBSET_NAMES.get(k, k)} ({counts.get(k, 0)} tensors)" for k in settings.get("subset", [])]
    if "head" in settings.get("subset", []) and settings.get("tied_head"):
        parts.append("the head is tied to the input embeddings: the shared matrix was trained")
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
    if any(s.endswith("lora") for s in settings.get("subset", [])):
        rows.append(("LoRA", f"rank {settings.get('lora_rank')}, alpha {settings.get('lora_alpha'):g}"))
    if settings.get("distill_weight"):
        rows.append(
            (
                "Distillation",
                f"KL to the dense model's logits, weight {settings['distill_weight']:g}, "
                f"temperature {settings.get('temperature'):g}",
            )
        )
    if "perplexity_before" in settings:
        rows.append(
            ("Perplexity", f"{settings['perplexity_before']:.2f} before, {settings['perplexity_after']:.2f} after")
        )
    return rows


def recovery_section(sidecar: dict[str, Any]) -> str:
    """Markdown for the recover stages (empty when there is none); every pruned weight stayed exactly zero."""
    stages = [s for s in (sidecar.get("pruning_map") or {}).get("stages", []) if s.get("kind") == "recover"]
    if not stages:
        return ""
    parts = [
        "\n\n### Recovery\n\nAfter pruning, a small parameter subset was retrained (PERP) with the transformers "
        "Trainer; every pruned weight is still exactly zero."
    ]
    for stage in stages:
        rows = _rows(stage.get("settings") or {})
        parts.append("| Aspect | Value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows))
    return "\n\n".join(parts)
