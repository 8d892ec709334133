"""Add lm-eval task results to a saved checkpoint: its side-car's `tasks` section and its re-rendered card. Each file
is written next to the original and moved over it (an interrupted run leaves the old file, never half a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..configuration import CONFIG_NAME
from ..utils import write_text_atomic
from .cards import render_model_card
from .sidecar import read_sidecar


def record_task_results(folder: str | Path, tasks: dict[str, dict[str, Any]]) -> Path:
    """Merge `tasks` (label -> task -> results, as `GBLMPruner.task_results`) into the checkpoint's side-car (a task
    measured again under the same label is replaced) and re-render README.md from it; returns the folder."""
    import json

    folder = Path(folder).expanduser()
    sidecar = read_sidecar(folder)  # refuses a missing or invalid side-car before anything is written
    recorded = dict(sidecar.get("tasks") or {})
    for label, per_task in tasks.items():
        recorded[label] = {**(recorded.get(label) or {}), **per_task}
    sidecar["tasks"] = recorded
    card = render_model_card(sidecar)
    write_text_atomic(folder / CONFIG_NAME, json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n")
    write_text_atomic(folder / "README.md", card)
    return folder
