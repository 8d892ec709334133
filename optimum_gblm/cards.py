"""Model cards generated from `templates/model_card.md` and the side-car data (never hand-written)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

TAGS = ("pruned", "sparse", "gblm", "optimum-gblm")


def card_metadata(sidecar: dict[str, Any]) -> dict[str, Any]:
    config = sidecar["config"]
    library = sidecar.get("library", "transformers")
    meta: dict[str, Any] = {
        "library_name": library,
        "pipeline_tag": "text-generation" if library == "transformers" else "image-classification",
        "tags": [*TAGS, config["method"], f"sparsity-{config['pattern'].replace(':', '-')}"],
    }
    if sidecar.get("base_model"):
        meta["base_model"] = sidecar["base_model"]
    if sidecar.get("license"):
        meta["license"] = sidecar["license"]
    return meta


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def render_model_card(sidecar: dict[str, Any]) -> str:
    config = sidecar["config"]
    template = resources.files("optimum_gblm").joinpath("templates/model_card.md").read_text(encoding="utf-8")
    sparsity = sidecar.get("sparsity") or {}
    base = sidecar.get("base_model") or "the base model"
    results = sidecar.get("results") or {}
    values = {
        "metadata": yaml.safe_dump(card_metadata(sidecar), sort_keys=True).strip(),
        "title": f"{base.split('/')[-1]} pruned with {config['method']} ({config['pattern']}, {config['sparsity']:.0%})",
        "summary": (
            f"This checkpoint is {base} pruned to {sparsity.get('overall_sparsity', config['sparsity']):.2%} "
            f"sparsity ({config['pattern']}) with the `{config['method']}` method of optimum-gblm. "
            "Weights are stored dense with exact zeros; no custom code is needed to load it."
        ),
        "results_table": _table([(k, f"{v:.4f}") for k, v in sorted(results.items())], ("metric", "value"))
        if results
        else "No evaluation was run.",
        "usage": "from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(\"<this repo>\")",
        "settings_table": _table([(k, json.dumps(v)) for k, v in sorted(config.items())], ("setting", "value")),
    }
    for key, value in values.items():
        template = template.replace("{{ " + key + " }}", value)
    return template


def write_model_card(folder: Path, sidecar: dict[str, Any]) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(sidecar), encoding="utf-8")
    return path
