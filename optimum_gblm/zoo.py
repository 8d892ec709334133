"""Model-zoo publishing: a manifest of base models x methods x patterns x sparsities, pruned, evaluated and pushed.

Resumable (an entry whose Hub repo already holds a side-car with the same config fingerprint is skipped) and
fault-tolerant (an invalid or failing entry is reported with its manifest line; the others proceed). See
`model_cards/zoo.yaml` for the manifest format.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .cards import default_repo_name, metric_values, render_zoo_table
from .configuration import GBLMConfig, parse_pattern
from .hub import NETWORK_ERRORS, check_repo_id, describe_error, push_folder, remote_sidecar, update_collection

logger = logging.getLogger(__name__)

CARTESIAN = {"models", "methods", "patterns", "sparsities"}
TOP_LEVEL = {"organization", "private", "collection", "defaults", "evaluation", "entries", *CARTESIAN}
ENTRY_KEYS = {"model", "repo"}
DESCRIPTION_LIMIT = 150  # the Hub's limit for a collection description
DEFAULT_MODEL = "default"  # manifest spelling of the embedded SmolLM2-135M-Instruct


def _model_id(model: str) -> str:
    """The id a manifest model is named and recorded under (the embedded default: its upstream Hub id)."""
    from .assets import DEFAULT_MODEL_ID

    return DEFAULT_MODEL_ID if model == DEFAULT_MODEL else model


# -- manifest -------------------------------------------------------------------------------------------------------
class _LineDict(dict):
    line: int | None = None
    key_lines: dict[Any, int] = {}


class _LineList(list):
    line: int | None = None
    item_lines: list[int] = []


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
        config = {**defaults, **{k: v for k, v in raw.items() if k not in ENTRY_KEYS}}
        if "calibration" in config:
            config["calibration"] = _resolve(config["calibration"], base)
        line = _line(raw) or _line(data["entries"], index)
        model = DEFAULT_MODEL if raw["model"] is None else str(_resolve(raw["model"], base))
        entries.append(ZooEntry(model, config, raw.get("repo"), line, lines))
    if not entries:
        raise ValueError("the manifest lists no entries: give `entries`, or `models` and `methods`")
    evaluation = {k: _resolve(v, base) if k == "source" else v for k, v in (data.get("evaluation") or {}).items()}
    return ZooManifest(org, entries, data.get("collection"), data.get("private"), evaluation, source)


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
        try:
            nm = parse_pattern(str(pattern))
        except ValueError:
            nm = None
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
        config = {**defaults, "method": method, "pattern": pattern, "sparsity": sparsity}
        model = DEFAULT_MODEL if model is None else str(_resolve(model, base))
        entries.append(ZooEntry(model, config, None, lines.get("model"), lines))
    return entries


# -- results --------------------------------------------------------------------------------------------------------
@dataclass
class ZooEntryResult:
    model: str
    repo_id: str | None
    status: str  # planned | published | skipped | failed | invalid
    line: int | None = None
    error: str | None = None
    commit: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, Any] | None = None


@dataclass
class ZooResult:
    entries: list[ZooEntryResult]
    table: str = ""
    table_path: Path | None = None
    collection_slug: str | None = None
    errors: list[str] = field(default_factory=list)  # problems that did not fail an entry (the collection)

    def _with(self, *statuses: str) -> list[ZooEntryResult]:
        return [e for e in self.entries if e.status in statuses]

    @property
    def published(self) -> list[ZooEntryResult]:
        return self._with("published")

    @property
    def skipped(self) -> list[ZooEntryResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[ZooEntryResult]:
        return self._with("failed", "invalid")

    @property
    def ok(self) -> bool:
        return not self.failed


def _plan(zoo: ZooManifest) -> list[tuple[ZooEntry, ZooEntryResult, GBLMConfig | None]]:
    """Validate every entry (config, repo id, duplicates) before anything heavy happens."""
    known = {f.name for f in fields(GBLMConfig)}
    plans, repos = [], {}
    for entry in zoo.entries:
        cfg = entry.config
        result = ZooEntryResult(_model_id(entry.model), None, "planned", entry.line, config=dict(cfg))
        try:
            unknown = sorted(set(cfg) - known)
            if unknown:
                raise ValueError(f"unknown config key(s) {unknown}: not GBLMConfig fields")
            config = GBLMConfig(**cfg)
            name = entry.repo or default_repo_name(result.model, config.method, config.pattern, config.sparsity)
            result.repo_id = check_repo_id(name if "/" in name else f"{zoo.organization}/{name}")
            if result.repo_id in repos:
                raise ValueError(
                    f"repo {result.repo_id!r} is also produced by the entry at line {repos[result.repo_id]}: "
                    "give one of them a `repo:` name"
                )
            repos[result.repo_id] = entry.line
        except (ValueError, TypeError) as err:
            result.status, result.error = "invalid", str(err)
            result.line = entry.line_for(str(err))
            logger.error("Zoo manifest line %s: %s", result.line, err)
            config = None
        plans.append((entry, result, config))
    return plans


def _publish_one(
    entry: ZooEntry,
    result: ZooEntryResult,
    config: GBLMConfig,
    zoo: ZooManifest,
    work: Path,
    evaluate: bool,
    eval_kwargs: dict[str, Any],
    token: str | None,
    endpoint: str | None,
) -> None:
    from .pruner import GBLMPruner
    from .saving import save_pruned

    remote = remote_sidecar(result.repo_id, token=token, endpoint=endpoint)
    if remote is not None and remote.get("config_fingerprint") == config.fingerprint():
        result.status, result.sidecar = "skipped", remote
        logger.info("%s is already published with this config: skipped", result.repo_id)
        return
    logger.info("Zoo: pruning %s -> %s", entry.model, result.repo_id)
    pruner = GBLMPruner.from_pretrained(None if entry.model == DEFAULT_MODEL else entry.model, config)
    try:
        if evaluate:
            pruner.evaluate(label="dense", **eval_kwargs)
        pruner.prune()
        if evaluate:
            pruner.evaluate(label="pruned", **eval_kwargs)
        folder = save_pruned(pruner, work / result.repo_id.replace("/", "--"), overwrite=True, repo_id=result.repo_id)
    finally:
        del pruner
        gc.collect()
    result.commit = str(push_folder(folder, result.repo_id, token=token, private=zoo.private, endpoint=endpoint))
    result.status, result.sidecar = "published", json.loads((folder / "gblm_config.json").read_text())


def publish_zoo(
    manifest: str | Path | dict[str, Any] | ZooManifest,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    work_dir: str | Path | None = None,
    evaluate: bool = True,
    eval_kwargs: dict[str, Any] | None = None,
    dry_run: bool = False,
    table_path: str | Path | None = None,
) -> ZooResult:
    """Prune, evaluate, save and push every manifest entry; add them to a collection; write the zoo table.

    Checkpoints are kept under `work_dir` (a temporary folder when None). The markdown table goes to `table_path`
    (default `work_dir/MODEL_ZOO.md` when `work_dir` is given). `dry_run` validates and plans without Hub access.
    """
    zoo = load_manifest(manifest)
    eval_kwargs = {**zoo.evaluation, **(eval_kwargs or {})}
    plans = _plan(zoo)
    result = ZooResult([r for _, r, _ in plans])
    if table_path is None and work_dir is not None:
        table_path = Path(work_dir) / "MODEL_ZOO.md"
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optimum-gblm-zoo-")))
        else:
            work = Path(work_dir) / "checkpoints"
            work.mkdir(parents=True, exist_ok=True)
        for entry, entry_result, config in plans if not dry_run else []:
            if config is None:
                continue
            try:
                _publish_one(entry, entry_result, config, zoo, work, evaluate, eval_kwargs, token, endpoint)
            except Exception as err:  # one failing entry is reported; the others still get published
                entry_result.status, entry_result.error = "failed", describe_error(err, token)
                logger.error("Zoo entry %s (line %s) failed: %s", entry_result.repo_id, entry.line, entry_result.error)
    if not dry_run:
        _update_collection(zoo, result, token, endpoint)
    result.table = render_zoo_table(zoo.organization, result.entries, endpoint)
    if table_path is not None:
        result.table_path = Path(table_path)
        result.table_path.parent.mkdir(parents=True, exist_ok=True)
        result.table_path.write_text(result.table, encoding="utf-8")
    logger.info(
        "Zoo: %d published, %d skipped, %d failed", len(result.published), len(result.skipped), len(result.failed)
    )
    return result


# -- collection and table -------------------------------------------------------------------------------------------
def _summary(entry: ZooEntryResult) -> str:
    cfg = (entry.sidecar or {}).get("config") or entry.config
    text = f"{cfg.get('method')} {cfg.get('pattern', 'unstructured')} {float(cfg.get('sparsity', 0)):.0%}"
    metric, values = metric_values(entry.sidecar or {})
    if values:
        text += "; " + ", ".join(f"{label} {metric} {v:.4g}" for label, v in sorted(values.items()))
    return text


def _description(zoo: ZooManifest, entries: list[ZooEntryResult]) -> str:
    given = (zoo.collection or {}).get("description")
    methods = sorted({str((e.sidecar or {}).get("config", e.config).get("method")) for e in entries})
    text = given or f"{len(entries)} sparse checkpoints pruned with optimum-gblm ({', '.join(methods)})"
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 3].rstrip() + "..."


def _update_collection(zoo: ZooManifest, result: ZooResult, token: str | None, endpoint: str | None) -> None:
    members = result.published + result.skipped
    if zoo.collection is None or not members:
        return
    title = zoo.collection.get("title") or "optimum-gblm model zoo"
    try:
        result.collection_slug = update_collection(
            title,
            zoo.organization,
            [(entry.repo_id, _summary(entry)) for entry in members],
            description=_description(zoo, members),
            private=bool(zoo.collection.get("private", False)),
            token=token,
            endpoint=endpoint,
        )
    except NETWORK_ERRORS as err:
        message = f"collection {title!r} was not updated ({describe_error(err, token)}); re-run to retry"
        logger.error("Zoo: %s", message)
        result.errors.append(message)
