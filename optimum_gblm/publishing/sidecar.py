"""The `gblm_config.json` side-car (format 2; format-1 files are read through `upgrade_sidecar`): built from plain
data, written and read as JSON. No network access."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..configuration import CONFIG_NAME, GBLMConfig
from ..pruning_map import PruningMap
from ..utils import read_json
from .provenance import base_model_license, library_versions, resolve_base_model, short_name

SIDECAR_FORMAT = "optimum-gblm/2"
KNOWN_FORMATS = ("optimum-gblm/1", SIDECAR_FORMAT)

logger = logging.getLogger(__name__)


def build_sidecar(
    *,
    config: GBLMConfig,
    model: Any,
    model_id: str | None,
    adapter: Any,
    base_model: str | None = None,
    pruning_map: PruningMap | None,
    calibration: dict[str, Any] | None,
    results: dict[str, float],
    timings: dict[str, float],
    evaluation: dict[str, dict[str, Any]],
    repo_id: str | None = None,
    tasks: dict[str, dict[str, Any]] | None = None,
    origin: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The side-car of a saved checkpoint. Environment-dependent card inputs (the base model's Hub id, name and
    license) are resolved here, once, so the card re-renders from the side-car alone.

    `base_model` is the Hub id the user names; without it, `model_id` counts as one only when it is not a local
    folder. `source` keeps what the model was loaded from.

    `origin`: the side-car of the checkpoint the model was loaded from (a pruned folder being recovered): its base
    model, name and license carry over, so the chain base -> prune -> recover stays on the card. When `pruning_map` is
    the origin's (recovered, not pruned again: `base_record` drops the rest on a new prune) its prune config,
    calibration, results, evaluation, timings and tasks carry over too; this session's own entries come after them."""
    hub_id, name = resolve_base_model(model_id, base_model, model)
    license_ = base_model_license(model_id, model) or (base_model_license(hub_id) if hub_id else None)
    if origin and not base_model:
        hub_id, name, license_ = _origin_base(origin, name, license_)
    payload: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "config": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "base_model": hub_id,
        "base_model_name": name,
        "source": model_id,
        "library": adapter.library,
        "adapter": adapter.name,
        "pruning_map": pruning_map.to_dict() if pruning_map is not None else None,
        "calibration": calibration,
        "results": dict(results),
        "timings": dict(timings),
        "versions": library_versions(),
        "deviations": {
            "accumulation": "fp32 gradient accumulation and fp32 scores (reference: fp16)"
            if config.score_dtype == "float32"
            else "fp16 scores, as the reference",
            "ties": "exact per-group counts with stable tie-breaking (reference: <= threshold over-prunes ties)",
        },
        "license": license_,
        "evaluation": dict(evaluation),
    }
    if origin and origin.get("pruning_map") and pruning_map is not None:
        _inherit(payload, origin, calibration)
    if repo_id:
        payload["repo_id"] = repo_id
    if tasks:  # lm-eval tasks by label (docs/evaluation.md)
        payload["tasks"] = {label: dict(per_task) for label, per_task in tasks.items()}
    return payload


def _origin_base(origin: dict[str, Any], name: str, license_: str | None) -> tuple[str | None, str, str | None]:
    """The base model of the checkpoint a model was loaded from: (Hub id, display name, license)."""
    base = origin.get("base_model")
    shown = origin.get("base_model_name") or (short_name(base) if base else name)
    return base, shown, origin.get("license") or license_


def _inherit(payload: dict[str, Any], origin: dict[str, Any], calibration: dict[str, Any] | None) -> None:
    """The earlier stages' record (the prune that made the loaded checkpoint) in a later stage's side-car."""
    if isinstance(origin.get("config"), dict):
        payload["config"] = origin["config"]
        payload["config_fingerprint"] = origin.get("config_fingerprint", payload["config_fingerprint"])
    if calibration is None:
        payload["calibration"] = origin.get("calibration")
    for key in ("results", "timings", "evaluation"):
        payload[key] = {**(origin.get(key) or {}), **payload[key]}
    if origin.get("deviations"):
        payload["deviations"] = origin["deviations"]
    if origin.get("tasks"):
        payload.setdefault("tasks", {})
        payload["tasks"] = {**origin["tasks"], **payload["tasks"]}


def base_record(origin: dict[str, Any] | None) -> dict[str, Any] | None:
    """What still holds of a loaded checkpoint's side-car once its model is pruned again: its base model only."""
    keys = ("base_model", "base_model_name", "license")
    return {k: origin[k] for k in keys if k in origin} if origin else None


def origin_map(origin: dict[str, Any] | None) -> PruningMap | None:
    """The pruning map a loaded checkpoint's side-car records (no masks: the weights' zeros are the mask)."""
    return PruningMap.from_dict(origin["pruning_map"]) if origin and origin.get("pruning_map") else None


def origin_sidecar(source: Any) -> dict[str, Any] | None:
    """The side-car of a checkpoint folder a model is loaded from (None: not a local folder, or no checkpoint side-car;
    a config-only file written by `GBLMConfig.save_pretrained` records no checkpoint)."""
    if not isinstance(source, (str, Path)):
        return None
    folder = Path(source).expanduser()
    if not (folder / CONFIG_NAME).is_file():
        return None
    try:
        data = read_sidecar(folder)
    except (OSError, ValueError) as err:
        logger.warning("%s: its history is not carried over to what is saved from it", err)
        return None
    return data if data.get("format") else None


def write_sidecar(folder: Path, payload: dict[str, Any]) -> Path:
    target = folder / CONFIG_NAME
    target.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return target


def upgrade_sidecar(data: dict[str, Any]) -> dict[str, Any]:
    """A format-1 side-car (per-layer `sparsity` report, flat method arguments) in the format-2 layout; format-2
    side-cars are returned unchanged."""
    if data.get("format") != "optimum-gblm/1":
        return data
    upgraded = {k: v for k, v in data.items() if k not in ("sparsity", "sparsity_range", "weight_prefix")}
    if isinstance(data.get("config"), dict):
        try:  # flat method arguments into method_args, offload_activations into intermediates
            upgraded["config"] = GBLMConfig.from_dict(data["config"]).to_dict()
        except ValueError as err:  # e.g. a method this version does not know: keep the config as written
            logger.warning("could not upgrade the version-1 config (%s); keeping it as written", err)
    report = data.get("sparsity")
    upgraded["pruning_map"] = PruningMap.from_v1_report(report, upgraded.get("config")).to_dict() if report else None
    upgraded["format"] = SIDECAR_FORMAT
    upgraded["upgraded_from"] = "optimum-gblm/1"
    return upgraded


class InvalidSidecar(ValueError):
    """A `gblm_config.json` that cannot be trusted: the message names the file and what is wrong with it."""


def _problem(data: Any) -> str | None:
    """What makes a parsed side-car unusable (None when it is usable): the fields readers rely on."""
    if not isinstance(data, dict):
        return f"expected a JSON object, found a JSON {type(data).__name__}"
    if data.get("format", SIDECAR_FORMAT) not in KNOWN_FORMATS:  # none: GBLMConfig.save_pretrained's config-only file
        return f"unknown format {data.get('format')!r} (this version reads {' and '.join(KNOWN_FORMATS)})"
    config = data.get("config")
    if not isinstance(config, dict):
        return "no `config` object"
    expected = {"method": str, "pattern": str, "sparsity": (int, float), "seqlen": int}
    for key, kind in expected.items():
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
            return f"config.{key} is {config.get(key)!r}"
    pruning_map = data.get("pruning_map")
    if pruning_map is not None and not (
        isinstance(pruning_map, dict)
        and isinstance(pruning_map.get("targets"), dict)
        and isinstance(pruning_map.get("overall_sparsity"), (int, float))
    ):
        return "`pruning_map` is neither null nor a map with `targets` and `overall_sparsity`"
    return None


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    """The side-car of a saved folder, in the format-2 layout (format-1 files are upgraded in memory). A file that is
    not valid JSON, or lacks what readers rely on, raises `InvalidSidecar` naming the file."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: not an optimum-gblm checkpoint")
    data = read_json(path, InvalidSidecar)
    problem = _problem(data)
    if problem is None:
        try:  # a format-1 pruning report that cannot be upgraded
            data = upgrade_sidecar(data)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            problem = f"unreadable format-1 sparsity report ({type(err).__name__}: {err})"
        else:
            problem = _problem(data)
    if problem:
        raise InvalidSidecar(f"{path} is not a valid optimum-gblm side-car: {problem}")
    return data
