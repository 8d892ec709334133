"""The per-layer sparsity plot of a checkpoint (`sparsity.png`, shown in its card), from the side-car alone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

PLOT_NAME = "sparsity.png"


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def ordered_layers(sidecar: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Per-linear entries in block order (the side-car stores them keyed by name, sorted as text)."""
    from .sidecar import upgrade_sidecar

    layers = (upgrade_sidecar(sidecar).get("pruning_map") or {}).get("targets") or {}
    return sorted(layers.items(), key=lambda item: _natural_key(item[0]))


def split_layer_name(name: str) -> tuple[int | None, str]:
    """`model.layers.3.mlp.up_proj` -> (3, `mlp.up_proj`): the block index and the linear within the block."""
    match = re.match(r"^(?:.*?\.)?(\d+)\.(.+)$", name)
    return (int(match.group(1)), match.group(2)) if match else (None, name)


def write_sparsity_plot(folder: str | Path, sidecar: dict[str, Any]) -> Path | None:
    """Per-layer achieved (markers) and target (dashed) sparsity by block, one series per linear; PNG, Agg."""
    layers = ordered_layers(sidecar)
    if not layers:
        return None
    # The Figure API with an explicit Agg canvas: no pyplot global state, the user's backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series: dict[str, list[tuple[float, float, float]]] = {}
    for position, (name, entry) in enumerate(layers):
        block, kind = split_layer_name(name)
        x = float(block if block is not None else position)
        series.setdefault(kind, []).append((x, entry["achieved_sparsity"], entry["target_sparsity"]))
    fig = Figure(figsize=(8, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for kind, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, linewidth=1, label=kind)
    target = sorted({(p[0], p[2]) for points in series.values() for p in points})
    if len({t[1] for t in target}) == 1:
        ax.axhline(target[0][1], color="black", linestyle="--", linewidth=0.8, label="target")
    else:  # allocated per linear (gblm-obs / gradient allocation)
        ax.scatter([t[0] for t in target], [t[1] for t in target], marker="x", s=12, color="black", label="target")
    values = [p[1] for points in series.values() for p in points] + [t[1] for t in target]
    ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("block")
    ax.set_ylabel("sparsity")
    config = sidecar["config"]
    ax.set_title(f"{config['method']} {config['pattern']}: per-layer sparsity", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = Path(folder) / PLOT_NAME
    fig.savefig(path, format="png", metadata={"Software": None})  # no version stamp: identical runs, identical bytes
    return path
