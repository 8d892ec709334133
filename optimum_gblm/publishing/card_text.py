"""The model card's sentences that depend on what the checkpoint is (`artefact.Artefact`): title, summary, the
Reproduce snippet, the notes and the structured / unrecorded per-layer sections."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .artefact import DENSE, SPARSE, STRUCTURED_KIND, UNRECORDED, Artefact

PAPER = "[optimum-gblm](https://arxiv.org/abs/2311.04902)"


def _recovered_clause(art: Artefact) -> str:
    return " and recovered with PERP" if art.recovered else ""


def title(art: Artefact, name: str, config: dict[str, Any]) -> str:
    if art.kind == DENSE:
        return f"{name} (dense, not pruned)"
    if art.kind == UNRECORDED:
        return f"{name} fine-tuned with PERP recovery (no pruning record)"
    if art.kind == STRUCTURED_KIND:
        widths = "per-layer widths" if art.per_layer else "uniform widths"
        return (
            f"{name} structurally pruned with {art.method} ({art.fraction:.0%} of block weights removed, {widths})"
            + _recovered_clause(art)
        )
    return f"{name} pruned with {art.method} ({art.pattern}, {art.fraction:.0%})" + _recovered_clause(art)


def _loads(art: Artefact) -> str:
    if art.per_layer:
        return "Its widths differ per layer: it loads with `optimum_gblm.load_pruned(folder)`."
    return f"It loads with plain {art.library}, no custom code."


def _recovery_sentence(art: Artefact) -> str:
    if not art.recovered:
        return ""
    kept = "every shape is unchanged" if art.kind == STRUCTURED_KIND else "every pruned weight is still exactly zero"
    return f" A small parameter subset was then retrained (PERP recovery, see Recovery); {kept}."


def summary(art: Artefact, shown: str, config: dict[str, Any]) -> str:
    if art.kind == DENSE:
        settings = f"`{config['method']}` ({config['pattern']}, {config['sparsity']:.0%})"
        return (
            f"This checkpoint is {shown}, saved **dense (not pruned)** with {PAPER}: the {settings} settings below "
            f"were not applied. {_loads(art)}"
        )
    if art.kind == UNRECORDED:
        return (
            f"This checkpoint is {shown} fine-tuned with PERP recovery by {PAPER}. It came **without a pruning "
            f"record** (no `gblm_config.json`), so nothing is claimed about how it was pruned: {art.zeros:.2%} of "
            f"its prune targets' weights are exact zeros, and recovery kept every one of them at zero. {_loads(art)}"
        )
    if art.kind == STRUCTURED_KIND:
        structure = art.structure or {}
        count = (
            f" It has {structure['parameters']:,} parameters (dense {structure['dense_parameters']:,})."
            if "parameters" in structure
            else ""
        )
        return (
            f"This checkpoint is {shown} with {art.achieved:.2%} of its blocks' linear weights removed (whole "
            f"attention heads and MLP channels: smaller dense matrices, no zeros) by the `{art.method}` structured "
            f"method of {PAPER}.{count}{_recovery_sentence(art)} {_loads(art)}"
        )
    return (
        f"This checkpoint is {shown} pruned to {art.achieved:.2%} sparsity in its pruned linears "
        f"(`{art.pattern}`) with the `{art.method}` method of {PAPER}.{_recovery_sentence(art)} {_loads(art)}"
    )


def _recovery_config(stage: dict[str, Any]) -> str:
    """`RecoveryConfig(...)` with the stage's settings that differ from the defaults."""
    from ..recovery import RecoveryConfig

    settings, default = stage.get("settings") or {}, RecoveryConfig()
    values = {
        f.name: settings[f.name]
        for f in fields(RecoveryConfig)
        if f.name in settings and settings[f.name] != getattr(default, f.name)
    }
    return "RecoveryConfig(" + ", ".join(f"{k}={v!r}" for k, v in values.items()) + ")"


def reproduce(sidecar: dict[str, Any], art: Artefact, base: str, source: str) -> str:
    """The chain that made the checkpoint: load the base model, prune with the stored config, then each recovery."""
    imports = "from huggingface_hub import hf_hub_download\n" if sidecar.get("repo_id") else ""
    names = "GBLMConfig, GBLMPruner" + (", RecoveryConfig" if art.recovered else "")
    if art.kind == UNRECORDED:
        lines = [
            "from optimum_gblm import GBLMPruner, RecoveryConfig\n",
            f'pruner = GBLMPruner.from_pretrained("{base}")',
        ]
    else:
        lines = [
            f"{imports}from optimum_gblm import {names}\n",
            f"config = GBLMConfig.from_pretrained({source})",
            f'pruner = GBLMPruner.from_pretrained("{base}", config)',
            "pruner.prune()" if art.pruned else 'pruner.save_pretrained("dense-copy", allow_dense=True)  # not pruned',
        ]
    lines += [f"pruner.recover({_recovery_config(stage)})" for stage in art.recover_stages]
    if art.kind == UNRECORDED:
        lines.append('pruner.save_pretrained("recovered", allow_dense=True)  # no pruning record')
    return "\n".join(lines)


def notes(sidecar: dict[str, Any], art: Artefact) -> str:
    if art.kind == STRUCTURED_KIND:
        weights = (
            "- Heads and MLP channels were removed: the weights are smaller dense matrices, faster on any runtime. "
            + (
                "Widths differ per layer: reload with `optimum_gblm.load_pruned(folder)`."
                if art.per_layer
                else "Every layer has the same widths: plain `transformers` reloads it."
            )
        )
    elif art.kind == SPARSE:
        weights = (
            "- Weights are stored dense (safetensors) with exact zeros: the file size equals the dense model's. Use a "
            "sparse\n  kernel or runtime to turn the sparsity into speed or memory savings."
        )
    elif art.kind == UNRECORDED:
        weights = "- Weights are stored dense (safetensors); the model they were trained from came without a record."
    else:
        weights = "- Weights are the base model's, unchanged (safetensors): this checkpoint was not pruned."
    deviations = {} if art.kind == UNRECORDED else sidecar.get("deviations") or {}  # pruning's deviations
    lines = [weights] + [f"- {key}: {value}" for key, value in sorted(deviations.items())]
    versions = sidecar.get("versions") or {}
    if versions:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    return "\n".join(lines)


def structured_section(art: Artefact, layers: list[tuple[str, dict[str, Any]]]) -> str:
    """Per-linear removed fractions and the kept widths of every block."""
    removed = [e["achieved_sparsity"] for _, e in layers]
    text = (
        f"Whole heads and MLP channels were removed ({art.fraction:.2%} of the blocks' linear weights targeted, "
        f"{art.achieved:.2%} removed); per linear, the removed share ranges from {min(removed):.2%} to "
        f"{max(removed):.2%}."
    )
    widths = (art.structure or {}).get("layers") or []
    if not widths:
        return text
    keys = list(widths[0])
    rows = ["| block | " + " | ".join(f"`{k}`" for k in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    rows += [f"| {i} | " + " | ".join(str(w.get(k)) for k in keys) + " |" for i, w in enumerate(widths)]
    return text + " Kept widths per block:\n\n" + "\n".join(rows)


def unrecorded_section(art: Artefact, layers: list[tuple[str, dict[str, Any]]]) -> str:
    zeros = [e["achieved_sparsity"] for _, e in layers]
    return (
        f"No pruning record: {art.zeros:.2%} of the {len(layers)} prune targets' weights are exact zeros (per "
        f"linear {min(zeros):.2%} to {max(zeros):.2%}), each kept at zero by recovery."
    )
