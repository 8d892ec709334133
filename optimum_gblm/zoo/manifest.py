"""Zoo manifests: YAML or JSON lists of base models x methods x patterns x sparsities, read with line numbers so
every error names the manifest line it comes from. See `model_cards/zoo.yaml` for the format."""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configuration import GBLMConfig
from ..masks import parse_pattern
from ..methods import argument_owners
from ..publishing.hub import check_repo_id

logger = logging.getLogger(__name__)

CARTESIAN = {"models", "methods", "patterns", "sparsities"}
TOP_LEVEL = {"organization", "private", "collection", "defaults", "evaluation", "entries", *CARTESIAN}
ENTRY_KEYS = {"model", "repo", "base_model"}  # base_model: the Hub id of a local `model`, for its card
DESCRIPTION_LIMIT = 150  # the Hub's limit for a collection description
DEFAULT_MODEL = "default"  # manifest spelling of the embedded SmolLM2-135M-Instruct
DEFAULT_METHOD = GBLMConfig.method  # what an entry without `method` prunes with


def _model_id(model: str) -> str:
    """The id a manifest model is named and recorded under (the embedded default: its upstream Hub id)."""
    from ..assets import DEFAULT_MODEL_ID

    return DEFAULT_MODEL_ID if model == DEFAULT_MODEL else model


# -- manifest -------------------------------------------------------------------------------------------------------
class _LineDict(dict):
    """A mapping with the line it starts on and the line of each key (per instance: never shared)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line: int | None = None
        self.key_lines: dict[Any, int] = {}


class _LineList(list):
    """A sequence with the line it starts on and the line of each item (per instance: never shared)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line: int | None = None
        self.item_lines: list[int] = []


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember the (1-based) lines they came from."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    data = _LineDict(loader.construct_mapping(node, deep=True))
    data.line = node.start_mark.line + 1
    data.key_lines = {loader.construct_object(k, deep=True): k.start_mark.line + 1 for k, _ in node.value}
    return data


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> _LineList:
    data = _LineList(loader.construct_sequence(node, deep=True))
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    return data


def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> int | str:
    # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124: keep N:M patterns as written.
    return node.value if ":" in node.value else yaml.SafeLoader.construct_yaml_int(loader, node)


_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _line(container: Any, key: Any = None) -> int | None:
    if key is None:
        return getattr(container, "line", None)
    if isinstance(container, _LineDict):
        return container.key_lines.get(key)
    if isinstance(container, _LineList) and isinstance(key, int) and key < len(container.item_lines):
        return container.item_lines[key]
    return None


@dataclass
class ZooEntry:
    """One checkpoint to publish: the base model, GBLMConfig fields, and where in the manifest it came from."""

    model: str
    config: dict[str, Any]
    repo: str | None = None
    line: int | None = None
    field_lines: dict[str, int] = field(default_factory=dict)
    base_model: str | None = None

    def line_for(self, error: str) -> int | None:
        """The manifest line of the field an error message names (`sparsity=...`), else the entry's line."""
        for match in re.finditer(r"\b([a-z_]+)(?:=| contains)|'([a-z_]+)'", error):
            name = match.group(1) or match.group(2)
            if name in self.field_lines:
                return self.field_lines[name]
        return self.line


@dataclass
class ZooManifest:
    organization: str
    entries: list[ZooEntry]
    collection: dict[str, Any] | None = None
    private: bool | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None


def _resolve(value: Any, base: Path | None) -> Any:
    """`./x` and `../x` are relative to the manifest's folder (Hub ids and absolute paths are left alone)."""
    if base is not None and isinstance(value, str) and value.startswith(("./", "../")):
        return str((base / value).resolve())
    return value


def load_manifest(manifest: str | Path | dict[str, Any] | ZooManifest) -> ZooManifest:
    """Read a YAML or JSON manifest (a path, or an already parsed dict) into entries, keeping line numbers."""
    if isinstance(manifest, ZooManifest):
        return manifest
    source = None
    if isinstance(manifest, (str, Path)):
        source = Path(manifest)
        text = source.read_text(encoding="utf-8")
        try:
            data = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass: no arbitrary objects
        except yaml.YAMLError:
            if source.suffix != ".json":
                raise
            data = json.loads(text)  # JSON that YAML 1.1 rejects (tabs): no line numbers, still usable
    else:
        data = manifest
    if not isinstance(data, dict):
        raise ValueError("a zoo manifest must be a mapping with `organization` and `entries` or `models`/`methods`")
    unknown = sorted(set(data) - TOP_LEVEL)
    if unknown:
        raise ValueError(
            f"unknown manifest key(s) {unknown} (line {_line(data, unknown[0])}): allowed {sorted(TOP_LEVEL)}"
        )
    org = data.get("organization")
    if not org or not isinstance(org, str):
        raise ValueError("the manifest needs `organization`: the Hub user or organization to publish under")
    try:
        check_repo_id(f"{org}/x")
    except ValueError:
        raise ValueError(f"organization={org!r} is not a valid Hub user or organization name") from None
    base = source.parent if source else None
    defaults = data.get("defaults") or {}
    default_lines = {k: v for k, v in (getattr(defaults, "key_lines", {}) or {}).items() if isinstance(k, str)}
    defaults = {k: _resolve(v, base) if k == "calibration" else v for k, v in defaults.items()}
    entries = _cartesian(data, defaults, default_lines, base)
    for index, raw in enumerate(data.get("entries") or []):
        if not isinstance(raw, dict) or "model" not in raw:
            raise ValueError(f"manifest entry {index + 1} (line {_line(data['entries'], index)}) needs a `model`")
        lines = {**default_lines, **{k: v for k, v in getattr(raw, "key_lines", {}).items() if isinstance(k, str)}}
        own = {k: v for k, v in raw.items() if k not in ENTRY_KEYS}
        config = {**_defaults_for(defaults, own.get("method", defaults.get("method", DEFAULT_METHOD))), **own}
        if "sparsity" not in own and _nm(config.get("pattern")):  # an N:M pattern fixes its own sparsity
            n, m = _nm(config["pattern"])
            config["sparsity"] = n / m
        if "calibration" in config:
            config["calibration"] = _resolve(config["calibration"], base)
        line = _line(raw) or _line(data["entries"], index)
        model = DEFAULT_MODEL if raw["model"] is None else str(_resolve(raw["model"], base))
        entries.append(ZooEntry(model, config, raw.get("repo"), line, lines, raw.get("base_model")))
    if not entries:
        raise ValueError("the manifest lists no entries: give `entries`, or `models` and `methods`")
    _check_default_arguments(defaults, default_lines, entries)
    evaluation = {k: _resolve(v, base) if k == "source" else v for k, v in (data.get("evaluation") or {}).items()}
    return ZooManifest(org, entries, data.get("collection"), data.get("private"), evaluation, source)


def _nm(pattern: Any) -> tuple[int, int] | None:
    try:
        return parse_pattern(str(pattern))
    except ValueError:
        return None


def _defaults_for(defaults: dict[str, Any], method: Any) -> dict[str, Any]:
    """The defaults that apply to one method: method arguments (flat or under `method_args`) only where the method
    declares them, so `beta` in the defaults of a `methods:` list goes to gblm-obs and not to wanda."""
    owners = argument_owners()
    out = {k: v for k, v in defaults.items() if k not in owners or method in owners[k]}
    if isinstance(out.get("method_args"), dict):
        out["method_args"] = {k: v for k, v in out["method_args"].items() if method in owners.get(k, [method])}
    return out


def _check_default_arguments(defaults: dict[str, Any], lines: dict[str, int], entries: list[ZooEntry]) -> None:
    """A method argument in `defaults` that no entry's method declares is a mistake, not something to drop."""
    owners, methods = argument_owners(), {str(e.config.get("method", DEFAULT_METHOD)) for e in entries}
    nested = defaults.get("method_args") if isinstance(defaults.get("method_args"), dict) else {}
    for key in [k for k in defaults if k in owners] + [k for k in nested if k in owners]:
        if not methods & set(owners[key]):
            raise ValueError(
                f"defaults: {key} (line {lines.get(key, lines.get('method_args'))}) is an argument of method "
                f"{' / '.join(owners[key])}, which no entry uses (methods: {', '.join(sorted(methods))})"
            )


def _cartesian(data: dict, defaults: dict, default_lines: dict[str, int], base: Path | None) -> list[ZooEntry]:
    """models x methods x patterns x sparsities; an N:M pattern fixes its own sparsity (N/M)."""
    models, methods = data.get("models") or [], data.get("methods") or []
    if not models and not methods:
        return []
    if not models or not methods:
        raise ValueError(f"the cartesian spec needs both `models` and `methods` (line {_line(data)})")
    patterns = data.get("patterns") or [defaults.get("pattern", "unstructured")]
    sparsities = data.get("sparsities") or [defaults.get("sparsity", 0.5)]
    entries, seen = [], set()
    for (mi, model), (ti, method), (pi, pattern), (si, sparsity) in itertools.product(
        enumerate(models), enumerate(methods), enumerate(patterns), enumerate(sparsities)
    ):
        nm = _nm(pattern)
        if nm is not None:
            sparsity, si = nm[0] / nm[1], None
        key = (
            str(model),
            str(method),
            str(pattern),
            float(sparsity) if isinstance(sparsity, (int, float)) else sparsity,
        )
        if key in seen:
            continue
        seen.add(key)
        lines = dict(default_lines)
        lines.update(
            model=_line(models, mi),
            method=_line(methods, ti),
            pattern=_line(patterns, pi),
            sparsity=_line(sparsities, si) if si is not None else _line(patterns, pi),
        )
        lines = {k: v for k, v in lines.items() if v is not None}
        config = {**_defaults_for(defaults, method), "method": method, "pattern": pattern, "sparsity": sparsity}
        model = DEFAULT_MODEL if model is None else str(_resolve(model, base))
        entries.append(ZooEntry(model, config, None, lines.get("model"), lines))
    return entries
